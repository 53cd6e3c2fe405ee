"""dfseg.data"""
