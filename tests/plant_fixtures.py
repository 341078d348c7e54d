"""Shared by the planting tests: a tiny random Llama saved with a small BPE tokenizer trained on the synthetic
world's texts (so every fictional name is several tokens and every item encodes), and small planting settings."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from culnig_ext.data import load_items
from culnig_ext.data import synthetic
from culnig_ext.data.builtin import COUNTRYRC_PATH
from culnig_ext.data.countryrc import read_templates
from tests.fixtures import save_random_llama

# 4 countries x 3 facts, 4 neurons each over both layers of a 2-layer model with 48 gate neurons per layer.
TINY = dict(countries=4, facts_per_country=3, neurons_per_country=4, layers="all", kin_pairs=1, kin_share=0.5,
            reading_per_country=2, min_name_tokens=2, batch_size=16, train_batch_size=16, progress=False)
LAYERS, HIDDEN, INTERMEDIATE = 2, 32, 48


def corpus(seed: int = 0) -> list[str]:
    """Every text the tiny model may be asked about (the world's items and training texts, the CountryRC templates,
    the builtin general items), with the country names taken out."""
    world = synthetic.make_world(TINY["countries"], TINY["facts_per_country"], seed)
    texts = ["Question: Answer:"]
    for items in (synthetic.scoring_items(world), synthetic.heldout_items(world),
                  synthetic.reading_items(world, split="scoring"), synthetic.reading_items(world, split="test")):
        for it in items:
            texts += [it.question, *it.choices]
    texts += [f"{ex.prompt} {ex.answer}" for ex in synthetic.training_examples(world)]
    texts += [t.context + " " + t.question for t in read_templates(COUNTRYRC_PATH)]
    for it in load_items("builtin:general"):
        texts += [it.question, *it.choices]
    # Without the names: they would become single tokens, and they must be several.
    for name in world.countries:
        texts = [t.replace(name, "") for t in texts]
    return texts


def bpe_tokenizer(seed: int = 0, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus`` (small vocabulary: fictional names split into pieces)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """A random tiny Llama (weights N(0, 0.1)) with the BPE tokenizer, saved into ``path``."""
    tokenizer = bpe_tokenizer(seed)
    return save_random_llama(path, tokenizer, hidden=HIDDEN, intermediate=INTERMEDIATE, layers=LAYERS, heads=4,
                             kv_heads=2, max_positions=512, seed=seed)
