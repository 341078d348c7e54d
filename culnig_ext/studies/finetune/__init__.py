"""The module study (the paper's "module selection for training"): its options, declared once (``settings``), rank
the decoder's blocks by the neurons they hold (``blocks``), fine-tune only the picked ones (``train``), run the top /
bottom / random study (``study``) and write its report (``report``)."""
__all__ = ["settings", "blocks", "train", "study", "report"]
