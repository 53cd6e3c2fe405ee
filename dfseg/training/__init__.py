"""dfseg.training"""
