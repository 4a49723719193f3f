"""transformers' own ModelTesterMixin and ConfigTester on the ortho_gpt2 classes.

The mixins come from the sdist of the installed transformers, fetched before pytest by
scripts/fetch_third_party_tests.py (`make test` runs it); if they are missing the module fails to collect, naming
that command. GenerationTesterMixin is not shipped there, so generation is covered by tests/test_ortho_gpt2.py.
"""
import sys
import unittest
import warnings

import pytest
import torch
from third_party_paths import require_third_party

sys.path.insert(0, str(require_third_party("transformers_tests")))

from transformers.models.auto import modeling_auto

with warnings.catch_warnings():  # transformers' own pytest marks (flash_attn_test, ...) are not registered here
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    from transformers_tests.test_configuration_common import ConfigTester
    from transformers_tests.test_modeling_common import ModelTesterMixin, ids_tensor, random_attention_mask

from dcls_zoo.lm import (
    OrthoGPT2Config,
    OrthoGPT2ForSequenceClassification,
    OrthoGPT2LMHeadModel,
    OrthoGPT2Model,
)

# The mixin decides which class is "the model with a head" from transformers' built-in name tables, not from the
# Auto registry (used by the training tests); register the type there for this module only.
_NAME_TABLES = {
    "MODEL_MAPPING_NAMES": "OrthoGPT2Model",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "OrthoGPT2LMHeadModel",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "OrthoGPT2ForSequenceClassification",
}


def setUpModule():
    for table, name in _NAME_TABLES.items():
        getattr(modeling_auto, table)["ortho_gpt2"] = name


def tearDownModule():
    for table in _NAME_TABLES:
        getattr(modeling_auto, table).pop("ortho_gpt2", None)


class OrthoGPT2ModelTester:
    def __init__(self, parent, activation="hermite", activation_degree=3):
        self.parent = parent
        self.batch_size = 2
        self.seq_length = 7
        self.is_training = True
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.max_position_embeddings = 64
        self.num_labels = 3
        self.type_sequence_label_size = 2
        self.activation = activation
        self.activation_degree = activation_degree

    def get_config(self) -> OrthoGPT2Config:
        return OrthoGPT2Config(
            vocab_size=self.vocab_size, n_embd=self.hidden_size, n_layer=self.num_hidden_layers,
            n_head=self.num_attention_heads, n_positions=self.max_position_embeddings, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=self.vocab_size - 1, eos_token_id=self.vocab_size - 1,
            pad_token_id=self.vocab_size - 1, num_labels=self.num_labels, activation=self.activation,
            activation_degree=self.activation_degree,
        )

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class OrthoGPT2ModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (OrthoGPT2Model, OrthoGPT2LMHeadModel, OrthoGPT2ForSequenceClassification)
    all_generative_model_classes = ()
    test_pruning = False
    test_head_masking = False

    def setUp(self):
        self.model_tester = OrthoGPT2ModelTester(self)
        self.config_tester = ConfigTester(self, config_class=OrthoGPT2Config, n_embd=37)

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model_outputs(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = OrthoGPT2LMHeadModel(config).eval()
        with torch.no_grad():
            logits = model(**inputs).logits
        self.assertEqual(logits.shape, (2, 7, 99))


class OrthoGPT2FourierModelTest(OrthoGPT2ModelTest):
    """The same suite with the Fourier activation (the paper's other GPT-2 setting)."""

    def setUp(self):
        self.model_tester = OrthoGPT2ModelTester(self, activation="fourier", activation_degree=5)
        self.config_tester = ConfigTester(self, config_class=OrthoGPT2Config, n_embd=37)
