"""dfseg.losses"""
