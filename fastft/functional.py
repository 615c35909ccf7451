"""The functional API of fastft, mirroring torch's signatures.

Every op dispatches through :mod:`fastft._backend` (``FASTFT_BACKEND`` / ``fastft.backend()``):
Triton kernels on CUDA, the plain-torch reference on CPU, the Triton interpreter when forced.
"""

from fastft.ops.attention import *  # noqa: F403
from fastft.ops.contrastive import *  # noqa: F403
from fastft.ops.cross_entropy import *  # noqa: F403
from fastft.ops.kd_loss import *  # noqa: F403
from fastft.ops.linear_cross_entropy import *  # noqa: F403
from fastft.ops.linear_kd_loss import *  # noqa: F403
from fastft.ops.lora import *  # noqa: F403
