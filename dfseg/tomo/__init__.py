"""dfseg.tomo"""
