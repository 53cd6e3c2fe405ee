"""dfseg.transforms: MONAI transforms (array + dictionary versions), one module per concern.

Projection domain: flux / reference normalization, detector drift, ``-ln``, beam hardening, FBP.
Volume domain: first-order beam hardening, spectrum normalization, directional decomposition,
feature maps, lung mask from the images, modality selection, synthetic tumours, histology registration.
:func:`projection_chain` and :func:`volume_chain` wire them into one ``Compose`` each.
"""

from __future__ import annotations

from dfseg.transforms.beam_hardening import *  # noqa: F403
from dfseg.transforms.beam_hardening import __all__ as _bh
from dfseg.transforms.decomposition import *  # noqa: F403
from dfseg.transforms.decomposition import __all__ as _dec
from dfseg.transforms.features import *  # noqa: F403
from dfseg.transforms.features import __all__ as _feat
from dfseg.transforms.flux import *  # noqa: F403
from dfseg.transforms.flux import __all__ as _flux
from dfseg.transforms.lung import *  # noqa: F403
from dfseg.transforms.lung import __all__ as _lung
from dfseg.transforms.modality import *  # noqa: F403
from dfseg.transforms.modality import __all__ as _mod
from dfseg.transforms.pipeline import *  # noqa: F403
from dfseg.transforms.pipeline import __all__ as _pipe
from dfseg.transforms.reconstruction import *  # noqa: F403
from dfseg.transforms.reconstruction import __all__ as _rec
from dfseg.transforms.registration import *  # noqa: F403
from dfseg.transforms.registration import __all__ as _reg
from dfseg.transforms.spectrum import *  # noqa: F403
from dfseg.transforms.spectrum import __all__ as _spec
from dfseg.transforms.tumour import *  # noqa: F403
from dfseg.transforms.tumour import __all__ as _tum

__all__ = [*_bh, *_dec, *_feat, *_flux, *_lung, *_mod, *_pipe, *_rec, *_reg, *_spec, *_tum]

from dfseg.transforms.stepping import *  # noqa: E402, F403  (appended: raw stepping frames -> proj_*)
from dfseg.transforms.stepping import __all__ as _step  # noqa: E402

__all__ += [*_step]

from dfseg.transforms.intensity import *  # noqa: E402, F403  (network input in tissue units)
from dfseg.transforms.intensity import __all__ as _int  # noqa: E402

__all__ += [*_int]
