"""dfseg.networks"""
