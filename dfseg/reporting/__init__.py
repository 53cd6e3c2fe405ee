"""dfseg.reporting"""
