"""dfseg: early-stage lung tumour detection in preclinical X-ray dark-field CT."""

__version__ = "0.1.0"
