"""The studies' options: ``RunConfig``, every option of ``culnig run`` defined once (a field is a flag, a
config-file key and a key of the run's config.json), and the paper's protocol as a preset of them; ``CompareConfig``
(``culnig compare``, the same way) and ``SweepConfig`` (``culnig sweep``).

No torch here (nor in what this imports): the CLI builds its parser from these classes without loading torch; the
modules that run the studies (``pipeline``, ``compare``, ``sweep``) re-export them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from culnig_ext.models.embedded import DEFAULT_MODEL, is_embedded
from culnig_ext.studies.finetune.settings import finetune_option, settings_from
from culnig_ext.studies.options import option


@dataclass
class RunConfig:
    """Everything ``run_pipeline`` needs; every fraction and threshold defaults to the paper's value.

    Attributes:
        recipe: the study (``culnig_ext.studies.recipes``): a builtin name or a file. Its sets, control, surface
            filters, thresholds and baselines are the defaults of the fields they map to (``recipe_options``); in
            Python build a configuration for a recipe with ``recipe_config`` (``RunConfig(recipe=...)`` alone keeps
            the fields as given and takes only the recipe's further structure).
        model: embedded alias (``smollm2``), GGUF file, local folder or hub id.
        data: cultural item source (``culnig_ext.data.load_items``); split by topic into scoring/test halves.
            ``auto``: BLEnD rebuilt from raw annotations when found, else the builtin set (``data.defaults``).
        crc, crc_test: CountryRC sources for scoring (neurons that fire on country names) and for evaluation
            (``auto``: the real templates beside the BLEnD folder, else the builtin ones).
        general: a non-cultural set evaluated beside the cultural ones (specificity); None to skip.
        format: ``letter``, ``cloze`` or ``auto`` (letter when the model answers letters above chance, else cloze;
            decided by a sequential test on at most ``format_probe_max`` scoring items, ``studies.format_probe``).
        control: the control prompt: ``empty`` (question removed, the paper's) or ``frame`` (keeps the question frame).
        normalize: ``count`` (paper: divide by item counts) or ``prob`` (divide by summed P, see ScoreTable).
        contrast_general: also subtract a general-ability table (half of ``general``; the other half is evaluated).
        n_random: random neuron sets (same count per site) to compare against.
        max_test_items: cap per evaluation set (seeded sample) to bound the run time; None = all.
        max_scoring_items: cap on the cultural (and CountryRC) scoring items (seeded sample); None = all.
        max_per_question: items per (country, question) kept before sampling (1: independent test items).
        n_parts, n_boot: stability (``stability.py``): random parts of the scoring items (two halves of them are
            compared) and bootstrap resamples of the parts; n_boot=0 keeps only the split-half comparison.
        checkpoint_activations: recompute each decoder layer in the backward pass of scoring (long inputs).
        protocol: ``ours`` or ``paper`` (``paper_config``: the paper's prompts, CountryRC items, dtype and random
            baseline; see ``culnig_ext.data.protocols``). Stated in every report.
        saq: a BLEnD folder: also evaluate its short-answer questions (English and local language, held-out topics)
            by greedy generation, ``saq_max_per_country`` questions per country, ``saq_max_new_tokens`` tokens.
        n_random_paper: random sets drawn the paper's way (uniform over all gate and q/k/v neurons pooled), shown
            beside ours (``n_random``, same count per site); 0 = none.
        full: the study's size. The defaults of these fields are the research-size study (``FULL_PRESET``: 400
            scoring items, 300 test items per set, 10 random sets, kinship over every group); ``culnig run`` on an
            embedded model without ``--full`` uses ``QUICK_PRESET`` instead (sized to finish in about 10 minutes
            on 2 CPU cores). None: decided by the model (``run_preset``); a run records what it used.
        kinship_groups: the kinship matrix over this many groups (a seeded choice among the groups with specific
            neurons; rows and columns), on those groups' test items; None = every group.
    """

    #: Keys a run records in its config.json beside the options (read back with ``--config``, they are skipped).
    RECORDS: ClassVar[tuple[str, ...]] = ("format_probe", "recipe_hash", "recipe_scoring_hash")

    # One definition: each field is also ``culnig run``'s flag (``--name-with-dashes``) and a key of ``--config``
    # files and of the config.json a run writes (culnig_ext.studies.options). A new option is a new field here.
    out: str = option("culnig_runs/default", "run folder; re-running into it resumes")
    recipe: str = option("culture", "the study as a recipe: a builtin name (culture, language) or a YAML/JSON file "
                         "(docs/recipes.md); it sets the defaults of --data, --control, --crc, --crc-test, --general, "
                         "the thresholds and --random, below the study size and the options given explicitly")
    model: str = option(DEFAULT_MODEL, "embedded alias (smollm2, gemma3-270m), a .gguf file, a model folder or a hub id")
    data: str = option("auto", "cultural item source (auto = BLEnD rebuilt from its raw annotations when a copy is "
                       "found, e.g. $CULNIG_BLEND_DIR or ../shared/data/blend, else builtin:cultural)")
    crc: str = option("auto", "CountryRC scoring templates (auto = the real templates 0-24 when found)")
    crc_test: str = option("auto", "CountryRC evaluation templates (auto = the real templates 25-49 when found)")
    general: str | None = option("builtin:general", "non-cultural set evaluated for specificity ('' or none to skip)")
    format: str = option("auto", "letter: the next token is the option letter; cloze: the option's text scored by "
                         "likelihood; auto: letter when answered above chance (a sequential test on at most "
                         "--format-probe-max scoring items)", choices=("letter", "cloze", "auto"))
    format_probe_max: int = option(64, "--format auto: at most this many scoring items in its sequential test")
    full: bool | None = option(None, "the research-size study (the defaults shown for --max-scoring-items, "
                               "--max-test-items, --random, --kinship-groups); --no-full: the quick study, sized to "
                               "finish in about 10 minutes on 2 CPU cores",
                               none="full for a hub or local model, quick for an embedded one")
    control: str = option("empty", "control prompt: empty (question removed, the paper's), frame (keeps the "
                          "question frame), transform:NAME (culnig_ext.data.transforms: neutral, shuffle) or "
                          "file:PATH (control items in the canonical schema, one per scoring item id)")
    normalize: str = option("count", "divide by item counts (the paper's) or by summed P", choices=("count", "prob"))
    contrast_general: bool = option(False, "also subtract a general-ability table (half of --general; the other "
                                    "half is evaluated)")
    t_mlp: float = option(0.01, "top fraction of MLP gate neurons (the paper's)")
    t_attn: float = option(0.002, "top fraction of q/k/v neurons (the paper's)")
    r_mlp: float = option(0.01, "CountryRC removal fraction, MLP (the paper's)")
    r_attn: float = option(0.01, "CountryRC removal fraction, q/k/v (the paper's)")
    t_specific: float = option(0.003, "top fraction for culture-specific neurons (the paper's)")
    r_specific: float = option(0.01, "CountryRC removal fraction for culture-specific neurons (the paper's)")
    z_min: float = option(0.5, "minimum z-score of a culture-specific neuron (the paper's)")
    n_random: int = option(10, "random neuron sets to compare against", flag="--random")
    kinship: bool = option(True, "the kinship matrix")
    kinship_groups: int | None = option(None, "groups in the kinship matrix (a seeded choice among those with "
                                        "specific neurons; none = all)")
    instance_view: bool = option(True, "the per-item view of the general neurons (one more scoring pass)")
    max_test_items: int | None = option(300, "cap per evaluation set (seeded sample; none = all)")
    max_scoring_items: int | None = option(400, "cap on the cultural and CountryRC scoring items (seeded sample; "
                                           "none = all)")
    max_per_question: int | None = option(1, "items per (country, question) kept before sampling (none = all)")
    n_parts: int = option(10, "random parts of the scoring items, for the stability table")
    n_boot: int = option(5, "bootstrap resamples of the scoring items for the stability table")
    batch_size: int = option(16, "items per forward/backward pass")
    dtype: str = option("float32", "weights' dtype", choices=("float32", "bfloat16", "float16"))
    device: str | None = option(None, "device for the whole model, e.g. cuda:0 (default: cpu)")
    threads: int | None = option(None, "CPU threads for torch's operations", none="torch's default, or 1 when "
                                 "the machine is busy (load average at or above its CPU count, where two threads "
                                 "contend and run several times slower); OMP_NUM_THREADS, when set, is kept")
    seed: int = option(0, "seed of samples and random sets")
    deterministic: bool = option(False, "torch's deterministic algorithms for the whole run (bit-identical GPU runs "
                                 "and resumes, at some cost in speed; the CPU is deterministic already)")
    progress: bool = option(True, "progress bars")
    device_map: str | None = option(None, "spread the model over devices: 'auto' or a JSON object (accelerate map)")
    attn_implementation: str | None = option(None, "attention implementation (sdpa, eager, ...; default: eager for "
                                             "soft-capped attention such as Gemma 2, else sdpa); recorded in tables")
    checkpoint: bool = option(True, "checkpoint scoring next to each score table (RUN/scores/*.ckpt); an "
                              "interrupted run resumes from it")
    checkpoint_every: int = option(20, "batches between scoring checkpoints")
    checkpoint_activations: bool = option(False, "recompute each decoder layer in the backward pass instead of "
                                          "keeping its activations (long inputs: far less memory, ~1.3x the time; "
                                          "same scores)")
    finetune: bool = option(False, "after the report, run the module study on the culture-general neurons (see "
                            "'culnig finetune'), into RUN/finetune/")
    # The module study's options are declared once, in culnig_ext.studies.finetune.settings (also the flags of
    # 'culnig finetune'): each finetune_<name> here takes its default and help from there.
    finetune_end: str = finetune_option("end")
    finetune_budget: float = finetune_option("budget")
    finetune_by: str = finetune_option("by")
    finetune_task: str = finetune_option("task")
    finetune_task_test: str | None = finetune_option("task_test")
    finetune_lora: bool = finetune_option("lora")
    finetune_epochs: int = finetune_option("epochs")
    finetune_lr: float = finetune_option("lr")
    finetune_train_batch_size: int = finetune_option("train_batch_size")
    finetune_grad_accum: int = finetune_option("grad_accum")
    finetune_max_steps: int | None = finetune_option("max_steps")
    finetune_max_train_items: int | None = finetune_option("max_train_items")

    protocol: str = option("ours", "ours, or paper: the paper's prompts and variants, CountryRC over its 8 countries, "
                           "bfloat16, eager attention for Gemma, the first 5 MCQs per (country, question), no item caps and its "
                           "pooled random baseline beside ours (see PAPER_PRESET)", choices=("ours", "paper"))
    n_random_paper: int = option(0, "random sets drawn the paper's way, uniform over all gate and q/k/v neurons pooled "
                                 "(paper protocol: 10)", flag="--paper-random")
    saq: str | None = option(None, "a BLEnD folder: also evaluate its short-answer questions in English and the "
                             "local languages (greedy generation)")
    saq_max_per_country: int | None = option(5, "short-answer questions per country (none = all)")
    saq_max_new_tokens: int = option(48, "generated tokens per short answer")

    def study_settings(self):
        """The module study's ``StudySettings`` from the ``finetune_*`` options (None without ``finetune``)."""
        if not self.finetune:
            return None
        return settings_from(self, "finetune_", seed=self.seed, eval_batch_size=self.batch_size,
                             progress=self.progress)


#: ``--protocol paper``: what differs from RunConfig's defaults (the paper's own choices, ynklab/CULNIG).
PAPER_PRESET: dict[str, Any] = dict(
    protocol="paper", crc="paper:countryrc", crc_test="paper:countryrc", format="letter", dtype="bfloat16",
    n_random_paper=10, max_per_question=5, max_scoring_items=None, max_test_items=None, full=True,
)

#: ``--full``: the research-size study, RunConfig's defaults as they are (400 scoring / 300 test items, 10 random
#: sets, kinship over every group); what a hub or local model gets without ``--no-full``.
FULL_PRESET: dict[str, Any] = dict(full=True)

#: The quick study: what ``culnig run`` on an embedded model uses without ``--full``, sized so that the whole run
#: (score, identify, evaluate with random sets, kinship on a subset, stability, report) finishes in about 10
#: minutes on 2 CPU cores. Its power is in every report ("Study size and power").
QUICK_PRESET: dict[str, Any] = dict(
    full=False, max_scoring_items=128, max_test_items=128, n_random=3, kinship_groups=4,
)

#: The fields that make a study's size (the report's "Study size and power" compares them with ``FULL_SIZES``).
SIZE_FIELDS = ("max_scoring_items", "max_test_items", "n_random", "kinship_groups", "n_parts", "n_boot")


def paper_config(**overrides: Any) -> RunConfig:
    """A ``RunConfig`` with the paper's protocol (``PAPER_PRESET``); ``overrides`` win over the preset."""
    return RunConfig(**{**PAPER_PRESET, **overrides})


#: The sizes the quick study changes, at their research-size values (RunConfig's defaults, read from the class).
FULL_SIZES: dict[str, Any] = {name: getattr(RunConfig, name) for name in SIZE_FIELDS}


def quick_config(**overrides: Any) -> RunConfig:
    """A ``RunConfig`` of the quick study (``QUICK_PRESET``); ``overrides`` win over the preset."""
    return RunConfig(**{**QUICK_PRESET, **overrides})


def run_preset(explicit: dict[str, Any]) -> dict[str, Any]:
    """The defaults a run's explicitly given options (config file and flags) select: ``PAPER_PRESET`` for
    ``protocol: paper``; else ``FULL_PRESET`` with ``full: true`` or for a model that is not embedded, and
    ``QUICK_PRESET`` with ``full: false`` or for an embedded model (the default, ``smollm2``), over the options the
    recipe sets (``--recipe``, ``recipe_options``). Explicit options win over the preset
    (``culnig_ext.studies.options.build``)."""
    from culnig_ext.studies.recipes import load_recipe, recipe_options

    base = recipe_options(load_recipe(explicit.get("recipe", RunConfig.recipe)))
    if explicit.get("protocol") == "paper":
        return {**base, **PAPER_PRESET}
    full = explicit.get("full")
    if full is None:
        full = not is_embedded(explicit.get("model", RunConfig.model))
    return {**base, **(FULL_PRESET if full else QUICK_PRESET)}


def recipe_config(recipe: str = "culture", **overrides: Any) -> RunConfig:
    """A ``RunConfig`` for ``recipe`` (a builtin name or a file): the recipe's options (``recipe_options``) with
    ``overrides`` over them (no study-size preset: pass ``**QUICK_PRESET`` for the quick study)."""
    from culnig_ext.studies.recipes import load_recipe, recipe_options

    return RunConfig(**{**recipe_options(load_recipe(recipe)), "recipe": recipe, **overrides})


def attn_implementation(cfg: RunConfig) -> str | None:
    """The attention implementation to load with: the option when given; the paper runs Gemma models with eager
    attention; otherwise None (``load_model`` picks eager for soft-capped attention such as Gemma 2, else SDPA)."""
    if cfg.attn_implementation:
        return cfg.attn_implementation
    return "eager" if cfg.protocol == "paper" and "gemma" in str(cfg.model).lower() else None


@dataclass
class CompareConfig:
    """Options of ``culnig compare`` (each fraction defaults to its paper's value); also its CLI flags."""

    out: str = option("culnig_runs/compare", "output folder; re-running reuses its score tables")
    model: str = option("smollm2", "embedded alias, .gguf file, model folder or hub id")
    data: str = option("builtin:cultural", "cultural item source (split by topic into scoring and test halves)")
    crc: str = option("builtin:countryrc", "CountryRC scoring templates")
    format: str = option("auto", "letter, cloze, or auto (letter when answered above chance)",
                         choices=("letter", "cloze", "auto"))
    control: str = option("empty", "control prompt: empty (question removed) or frame", choices=("empty", "frame"))
    t_specific: float = option(0.003, "CULNIG: top fraction of all neurons per group")
    r_specific: float = option(0.01, "CULNIG: CountryRC removal fraction")
    z_min: float = option(0.5, "CULNIG: minimum z-score across groups")
    top_rate: float = option(0.01, "LAPE: share of neurons kept by lowest entropy")
    filter_rate: float = option(0.95, "LAPE: a neuron needs some group above this quantile of probabilities")
    activation_bar_ratio: float = option(0.95, "LAPE: a group gets a kept neuron above this quantile")
    n_random: int = option(3, "random sets per method", flag="--random")
    max_items: int | None = option(None, "cap on scoring items per source (seeded sample; none = all)")
    max_test_items: int | None = option(120, "cap on test items (seeded sample; none = all)")
    batch_size: int = option(16, "items per forward/backward pass")
    dtype: str = option("float32", "weights' dtype", choices=("float32", "bfloat16", "float16"))
    device: str | None = option(None, "device for the whole model, e.g. cuda:0")
    seed: int = option(0, "seed of the samples and random sets")
    progress: bool = option(True, "progress bars")


@dataclass
class SweepConfig:
    """Everything ``run_sweep`` needs (sources as in ``RunConfig``; ``auto`` finds BLEnD)."""

    out: str = "culnig_runs/sweep"
    model: str = "smollm2"
    recipe: str = "culture"  # recorded; the sources below are the recipe's unless given (``recipe_sources``)
    data: str = "auto"
    crc: str = "auto"
    crc_test: str = "auto"
    general: str = "builtin:general"
    format: str = "cloze"
    normalize: tuple[str, ...] = ("count", "prob")
    control: tuple[str, ...] = ("empty", "frame")
    contrast_general: tuple[bool, ...] = (False, True)
    scale: tuple[float, ...] = (1.0, 2.0)
    t_mlp: float = 0.01
    t_attn: float = 0.002
    r_mlp: float = 0.01
    r_attn: float = 0.01
    n_random: int = 10
    max_scoring_items: int | None = 400
    max_val_items: int | None = 150
    max_test_items: int | None = 300
    max_per_question: int | None = 1
    batch_size: int = 16
    dtype: str = "float32"
    device: str | None = None
    seed: int = 0
    progress: bool = True
