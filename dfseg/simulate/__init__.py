"""dfseg.simulate"""
