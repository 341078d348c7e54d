"""Models and where their neurons are: loading (hub id, folder, GGUF, embedded alias), the GGUF header, neuron
sites (MLP gate and attention q/k/v of every decoder layer), mixture-of-experts taps, wrapped/quantised layers and
activation checkpointing."""
from culnig_ext._utils.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "load_model": "loading:load_model",
    "load_tokenizer": "loading:load_tokenizer",
    "resolve": "loading:resolve",
    "parse_device_map": "loading:parse_device_map",
    "EmbeddedModel": "embedded:EmbeddedModel",
    "is_embedded": "embedded:is_embedded",
    "auto_attn_implementation": "loading:auto_attn_implementation",
    "Site": "sites:Site",
    "neuron_sites": "sites:neuron_sites",
    "decoder_layers": "sites:decoder_layers",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
