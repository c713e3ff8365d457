"""Stand-in for transformers' ``tests/utils/test_configuration_utils.py`` (not in the transformers sdist).

``ConfigTester.check_config_arguments_init`` builds a config from ``config_common_kwargs`` and checks that every
value comes back. Each value therefore differs from ``PreTrainedConfig``'s default (transformers 5.23), so a config
subclass that drops or overrides one of them is caught. ``dtype`` is compared as ``torch.float16``.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "is_encoder_decoder": True,
    "architectures": ["HfSegDummyModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
    "name_or_path": "hf-seg/dummy-config",
}
