"""hf_seg: SETR, SegFormer and MPViT for semantic segmentation in the transformers ecosystem."""
