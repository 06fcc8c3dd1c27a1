"""Complete verification of implicit networks: certified, refuted, or unknown (out of time).

`verify` is the entry point (docs/maths.md#verification); `nemon.verification.network` lowers a
model to sparse blocks, `bounds` boxes every neuron, `program` states the mixed-integer program
and its rigorous dual bound, `search` runs branch and bound over ReLU phases with HiGHS.
"""

from .network import VerificationUnsupported
from .verify import VerificationResult, verify

__all__ = ["verify", "VerificationResult", "VerificationUnsupported"]
