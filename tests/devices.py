"""Logical devices for tests of distribution strategies on one CPU host."""

from __future__ import annotations

import tensorflow as tf


def split_cpu(count: int = 2) -> None:
    """Splits the host CPU into `count` logical devices (MirroredStrategy).

    Devices are fixed when TensorFlow first runs an op, so test modules
    call this at import. A second call with the same count, from another
    module in the same process, keeps the configuration it finds.

    Args:
      count: logical CPUs wanted.

    Raises:
      RuntimeError: TensorFlow already started with a different split.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu) or []
    if len(current) == count:
        return
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )
