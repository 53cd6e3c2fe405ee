"""dfseg.transforms"""
