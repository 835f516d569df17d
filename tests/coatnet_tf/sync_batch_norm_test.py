"""`sync_batch_norm`: BatchNorm statistics over all replicas."""

import numpy as np
import tensorflow as tf

import coatnet_tf
from tests import devices

devices.split_cpu(2)  # For MirroredStrategy; before any op runs.


def moving_variance_after_one_step(sync: bool) -> np.ndarray:
    """The stem's norm0 moving variance after one training call on 2
    replicas, replica r seeing only images of constant value r + 1.

    The variance, not the mean, tells the two modes apart: moving
    statistics are ON_READ variables that read as the replicas' average,
    and the average of per-replica means equals the global mean.
    """
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = coatnet_tf.create_model(
            "coatnet-tiny",
            num_classes=3,
            image_size=32,
            sync_batch_norm=sync,
            bn_momentum=0.0,  # Moving = the last batch's statistics.
        )
        model(tf.zeros([1, 32, 32, 3]))
        # conv0 = identity-like: a kernel that sums the centre pixel's
        # channels, so norm0's input equals 3 x the image value.
        kernel = np.zeros(model.stem.conv0.kernel.shape, np.float32)
        kernel[1, 1, :, :] = 1.0
        model.stem.conv0.kernel.assign(kernel)
        model.stem.conv0.bias.assign(tf.zeros_like(model.stem.conv0.bias))

    def replica_step():
        ctx = tf.distribute.get_replica_context()
        value = tf.cast(ctx.replica_id_in_sync_group, tf.float32) + 1.0
        model(tf.fill([2, 32, 32, 3], value), training=True)

    strategy.run(tf.function(replica_step, autograph=False))
    return model.stem.norm0.moving_variance.numpy()


class SyncBatchNormTest(tf.test.TestCase):
    def test_statistics_span_replicas(self):
        # norm0 sees 3 on replica 0 and 6 on replica 1: each replica's
        # own variance is 0; over both replicas it is 1.5^2 = 2.25.
        self.assertAllClose(
            moving_variance_after_one_step(True), np.full(16, 2.25)
        )
        self.assertAllClose(
            moving_variance_after_one_step(False), np.zeros(16), atol=1e-6
        )

    def test_config_round_trip(self):
        model = coatnet_tf.create_model(
            "coatnet-tiny", 3, 32, sync_batch_norm=True
        )
        self.assertTrue(model.stem.norm0.synchronized)
        self.assertTrue(model.config.sync_batch_norm)
        clone = coatnet_tf.CoAtNet.from_config(model.get_config())
        self.assertTrue(clone.stem.norm0.synchronized)


if __name__ == "__main__":
    tf.test.main()
