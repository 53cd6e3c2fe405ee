"""dfseg.physics"""
