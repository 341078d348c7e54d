"""The options of ``culnig plant`` (``PlantConfig``) and ``culnig validate`` (``ValidateConfig``), defined once: each
field is a flag (``studies.options``). No torch here: the CLI builds its parser from these classes."""
from __future__ import annotations

from dataclasses import dataclass

from culnig_ext.studies.options import option


@dataclass
class PlantConfig:
    """Everything ``studies.plant.plant`` needs. The defaults are the demo's (SmolLM2-135M, 8 countries x 6 facts,
    16 neurons per country in the upper half of the layers), sized to finish on two CPU cores."""

    out: str = option("culnig_runs/planted", "output folder (DIR/model, DIR/planted.json, DIR/data/*.jsonl)")
    model: str = option("smollm2", "the model to plant into: embedded alias, .gguf file, model folder or hub id")
    countries: int = option(8, "fictional countries K")
    facts_per_country: int = option(6, "facts per country (question types, the first 6 cover BLEnD's 6 topics)")
    neurons_per_country: int = option(16, "planted MLP gate neurons per country (G_c)")
    layers: str = option("upper", "layers the planted neurons are spread over: all, upper (the upper half) or A-B")
    kin_pairs: int = option(2, "disjoint pairs of kin countries that share neurons")
    kin_share: float = option(0.25, "share of a country's neurons its kin shares")
    lr: float = option(0.005, "AdamW learning rate of the planted rows/columns")
    epochs: int = option(6, "most passes over the training texts")
    stop_loss: float = option(0.1, "stop once an epoch's mean answer NLL is below this")
    train_batch_size: int = option(8, "training texts per step (each step holds one country's texts)")
    target_accuracy: float = option(0.9, "held-out accuracy the planting aims at (a warning below it)")
    scoring_draws: int = option(1, "option draws per (fact, scoring phrasing) in the scoring MCQs (the cloze format "
                                "scores the answer alone, so more draws repeat the same prompt and score)")
    reading_per_country: int | None = option(4, "CountryRC-style templates per country, scoring and test each "
                                             "(none = all 15)")
    min_name_tokens: int = option(2, "tokens a fictional name must at least have")
    batch_size: int = option(32, "items per evaluation forward pass")
    dtype: str = option("float32", "weights' dtype", choices=("float32", "bfloat16", "float16"))
    device: str | None = option(None, "device for the whole model, e.g. cuda:0 (default: cpu)")
    seed: int = option(0, "seed of the world, the neurons, the kinship and the training order")
    progress: bool = option(True, "progress bars")


@dataclass
class ValidateConfig:
    """Everything ``studies.validate.validate`` needs besides the planted folder. Fractions default to the paper's."""

    out: str = option("culnig_runs/validation", "output folder (OUT/validation.md, validation.json, sets/)")
    t_mlp: float = option(0.01, "CULNIG general: top fraction of MLP gate neurons (the paper's)")
    t_attn: float = option(0.002, "CULNIG general: top fraction of q/k/v neurons (the paper's)")
    r_mlp: float = option(0.01, "CountryRC removal fraction, MLP (the paper's)")
    r_attn: float = option(0.01, "CountryRC removal fraction, q/k/v (the paper's)")
    t_specific: float = option(0.003, "CULNIG specific: top fraction of all neurons (the paper's)")
    r_specific: float = option(0.01, "CULNIG specific: CountryRC removal fraction (the paper's)")
    z_min: float = option(0.5, "CULNIG specific: minimum z-score (the paper's)")
    top_rate: float = option(0.01, "LAPE: share of neurons kept by lowest entropy")
    filter_rate: float = option(0.95, "LAPE: a neuron needs some group above this quantile of probabilities")
    activation_bar_ratio: float = option(0.95, "LAPE: a group gets a kept neuron above this quantile")
    n_boot: int = option(200, "bootstrap resamples of the scoring items (intervals of every recovery figure)")
    sample_sizes: str = option("25,50,100,200,400", "scoring-item counts of the sample-efficiency curve (those "
                               "above the number of scoring items are dropped; all items are always added)")
    sample_draws: int = option(5, "random subsets per sample size")
    n_random: int = option(5, "random neuron sets (same size and sites as the recovered set) for inhibition",
                           flag="--random")
    max_test_items: int | None = option(None, "cap per evaluation set (seeded sample; none = all)")
    general: str | None = option("builtin:general", "non-cultural set evaluated under inhibition (none to skip)")
    max_general_items: int | None = option(32, "cap on the non-cultural items (seeded sample; none = all)")
    kinship: bool = option(True, "the kinship matrix (one evaluation of the test items per country)")
    max_kinship_items: int | None = option(48, "cap on the held-out items of the kinship matrix (seeded sample "
                                           "balanced over countries; none = all)")
    negative_control: bool = option(True, "run the same recovery on the unplanted base model")
    batch_size: int = option(32, "items per forward/backward pass")
    dtype: str = option("float32", "weights' dtype", choices=("float32", "bfloat16", "float16"))
    device: str | None = option(None, "device for the whole model, e.g. cuda:0 (default: cpu)")
    seed: int = option(0, "seed of bootstrap resamples, random sets and subsets")
    progress: bool = option(True, "progress bars")
