"""dfseg.evaluation"""
