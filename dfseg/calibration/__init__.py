"""dfseg.calibration"""
