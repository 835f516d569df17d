"""Tests for the variant table and CoAtNetConfig."""

import json

import tensorflow as tf
from absl.testing import parameterized

import coatnet_tf
from coatnet_tf import config as config_lib


def layout(config):
    return [
        (s.kind[0].upper(), s.depth, s.width, s.stride) for s in config.stages
    ]


class VariantTableTest(tf.test.TestCase, parameterized.TestCase):
    def test_names(self):
        self.assertEqual(
            coatnet_tf.list_variants(),
            [f"coatnet-{i}" for i in range(8)] + ["coatnet-tiny"],
        )

    @parameterized.parameters(
        # Table 3: S0 D; S1..S4 (L, D); head size 32.
        ("coatnet-0", 64, [(2, 96), (3, 192), (5, 384), (2, 768)], 32),
        ("coatnet-1", 64, [(2, 96), (6, 192), (14, 384), (2, 768)], 32),
        ("coatnet-2", 128, [(2, 128), (6, 256), (14, 512), (2, 1024)], 32),
        ("coatnet-3", 192, [(2, 192), (6, 384), (14, 768), (2, 1536)], 32),
        ("coatnet-4", 192, [(2, 192), (12, 384), (28, 768), (2, 1536)], 32),
        # Table 11: head size 64.
        ("coatnet-5", 192, [(2, 256), (12, 512), (28, 1280), (2, 2048)], 64),
    )
    def test_table_3_and_11(self, name, stem, stages, head_size):
        config = coatnet_tf.VARIANTS[name]
        self.assertEqual(config.stem_width, stem)
        self.assertEqual(config.head_size, head_size)
        self.assertEqual(
            layout(config),
            [
                (kind, depth, width, 2)
                for kind, (depth, width) in zip("MMTT", stages)
            ],
        )

    @parameterized.parameters(
        # Table 12: mixed S3, 8 MBConv then 42 TFM at twice the width.
        # CoAtNet-6's S4 is 3072, not Table 12's 2048: Table 5's parameter
        # count and FLOPs both imply 3072 (see coatnet_tf/config.py).
        ("coatnet-6", [(2, 192), (4, 384), (8, 768), (42, 1536), (2, 3072)]),
        ("coatnet-7", [(2, 256), (4, 512), (8, 1024), (42, 2048), (2, 3072)]),
    )
    def test_table_12_mixed_stage(self, name, stages):
        config = coatnet_tf.VARIANTS[name]
        self.assertEqual(config.stem_width, 192)
        self.assertEqual(config.head_size, 128)
        self.assertEqual(
            layout(config),
            [
                (kind, depth, width, stride)
                for kind, (depth, width), stride in zip(
                    "MMMTT", stages, [2, 2, 2, 1, 2]
                )
            ],
        )
        self.assertEqual(config.stage_strides(), [4, 8, 16, 16, 32])

    def test_tiny_has_every_stage_kind(self):
        config = coatnet_tf.VARIANTS["coatnet-tiny"]
        self.assertEqual([k for k, *_ in layout(config)], list("MMTT"))
        for size in (32, 64):
            grids = coatnet_tf.get_config(
                "coatnet-tiny", image_size=size
            ).stage_grids()
            self.assertEqual(grids[-1], (size // 32, size // 32))


class ConfigTest(tf.test.TestCase, parameterized.TestCase):
    def test_overrides(self):
        config = coatnet_tf.get_config(
            "coatnet-0",
            num_classes=21841,
            image_size=384,
            drop_path_rate=0.3,
            dropout_rate=0.1,
            head_init_bias=-10.0,
            pre_logits=False,
        )
        self.assertEqual(config.image_size, (384, 384))
        self.assertEqual(config.num_classes, 21841)
        self.assertFalse(config.pre_logits)
        self.assertEqual(config.head_init_bias, -10.0)
        # The table itself is unchanged.
        self.assertEqual(coatnet_tf.VARIANTS["coatnet-0"].num_classes, 1000)

    def test_rejects_unknown(self):
        with self.assertRaisesRegex(ValueError, "Unknown variant"):
            coatnet_tf.get_config("coatnet-9")
        with self.assertRaisesRegex(ValueError, "drop_rate"):
            coatnet_tf.get_config("coatnet-0", drop_rate=0.1)
        with self.assertRaisesRegex(ValueError, "stages"):
            coatnet_tf.get_config("coatnet-0", stages=())

    @parameterized.parameters(
        dict(drop_path_rate=1.0),
        dict(dropout_rate=-0.1),
        dict(num_classes=-1),
        dict(head_size=100),  # S3 width 384 is not a multiple of 100.
        dict(image_size=(0, 224)),
        dict(kernels="xla"),
    )
    def test_rejects_invalid_values(self, **override):
        with self.assertRaises(ValueError):
            coatnet_tf.get_config("coatnet-0", **override)

    @parameterized.parameters(
        (224, [(56, 56), (28, 28), (14, 14), (7, 7)]),
        (384, [(96, 96), (48, 48), (24, 24), (12, 12)]),
        ((256, 192), [(64, 48), (32, 24), (16, 12), (8, 6)]),
        (100, [(25, 25), (13, 13), (7, 7), (4, 4)]),  # SAME: ceil.
    )
    def test_stage_grids(self, size, grids):
        config = coatnet_tf.get_config("coatnet-0", image_size=size)
        self.assertEqual(config.stage_grids(), grids)
        self.assertEqual(config.stage_strides(), [4, 8, 16, 32])

    def test_drop_path_rates_are_linear(self):
        config = coatnet_tf.get_config("coatnet-1", drop_path_rate=0.3)
        rates = config.drop_path_rates()
        self.assertLen(rates, 2 + 6 + 14 + 2)
        self.assertEqual(rates[0], 0.0)
        self.assertAlmostEqual(rates[-1], 0.3)
        steps = [b - a for a, b in zip(rates, rates[1:])]
        self.assertAllClose(steps, [0.3 / 23] * 23)

    def test_kernels_field(self):
        # "fused" is the default: what training and CPU serving run.
        self.assertEqual(coatnet_tf.get_config("coatnet-0").kernels, "fused")
        config = coatnet_tf.get_config("coatnet-0", kernels="reference")
        self.assertEqual(config.to_dict()["kernels"], "reference")
        with self.assertRaisesRegex(ValueError, "kernels 'xla' not in"):
            coatnet_tf.get_config("coatnet-0", kernels="xla")
        # A dict written before the field existed reads as "fused".
        values = config.to_dict()
        del values["kernels"]
        self.assertEqual(
            config_lib.CoAtNetConfig.from_dict(values).kernels, "fused"
        )

    def test_json_round_trip(self):
        config = coatnet_tf.get_config(
            "coatnet-6",
            image_size=(512, 384),
            drop_path_rate=0.1,
            kernels="reference",
        )
        restored = config_lib.CoAtNetConfig.from_dict(
            json.loads(json.dumps(config.to_dict()))
        )
        self.assertEqual(restored, config)
        self.assertIsInstance(restored.stages[0], config_lib.StageSpec)

    def test_head_width(self):
        self.assertEqual(coatnet_tf.get_config("coatnet-2").head_width, 1024)
        self.assertEqual(
            coatnet_tf.get_config("coatnet-2", pre_logits_size=256).head_width,
            256,
        )


if __name__ == "__main__":
    tf.test.main()
