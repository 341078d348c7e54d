"""Statistics: the paired bootstrap and Holm's correction (``bootstrap``), power as a minimum detectable drop
(``power``) and the specificity verdict (``verdict``)."""
from culnig_ext._utils.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "BootstrapResult": "bootstrap:BootstrapResult",
    "paired_bootstrap": "bootstrap:paired_bootstrap",
    "resampled_sums": "bootstrap:resampled_sums",
    "holm": "bootstrap:holm",
    "significant": "bootstrap:significant",
    "minimum_detectable_drop": "power:minimum_detectable_drop",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
