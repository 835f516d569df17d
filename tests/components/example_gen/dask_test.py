"""Beam's DaskRunner on a local dask.distributed cluster of 2 processes.

It must write exactly what the DirectRunner writes: the same records in
the same shards (placement is by content hash and seed, not by runner),
the same dead letters, and the accounting must hold.
"""

import os
import shutil
import tempfile

from absl.testing import absltest
from dask import distributed

from components import base
from components.example_gen import component
from components.example_gen import config as config_lib
from tests.components.example_gen import fixtures


def _config(root: str, **kwargs) -> config_lib.ExampleGenConfig:
    return config_lib.ExampleGenConfig(
        source=config_lib.IMAGE_FOLDER,
        input=f"{root}/train",
        validation_input=f"{root}/val",
        validation_labels=f"{root}/val_labels.csv",
        num_shards=3,
        num_eval_shards=2,
        max_pixels=1_000_000,
        **kwargs,
    )


class DaskRunnerTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp()
        cls.root = os.path.join(cls.tmp, "data")
        fixtures.make_image_folder(cls.root)
        cls.cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()
        shutil.rmtree(cls.tmp)
        super().tearDownClass()

    def test_dask_writes_what_the_direct_runner_writes(self):
        dask_uri = os.path.join(self.tmp, "dask")
        dask_config = _config(
            self.root,
            runner="DaskRunner",
            dask_address=self.cluster.scheduler_address,
            # Several partitions, so that both workers get work.
            beam_pipeline_args=("--dask_npartitions=4",),
        )
        base.execute(
            component.ExampleGen(), {}, {"examples": dask_uri}, dask_config
        )
        direct_uri = os.path.join(self.tmp, "direct")
        direct_config = _config(
            self.root,
            beam_pipeline_args=(
                "--direct_running_mode=in_memory",
                "--direct_num_workers=1",
            ),
        )
        base.execute(
            component.ExampleGen(), {}, {"examples": direct_uri}, direct_config
        )

        for split in ("train", "validation"):
            dask_shards = fixtures.read_shards(dask_uri, split)
            direct_shards = fixtures.read_shards(direct_uri, split)
            self.assertEqual(dask_shards, direct_shards, split)
            self.assertNotEmpty([r for s in dask_shards.values() for r in s])
        self.assertEqual(
            fixtures.read_rejects(dask_uri), fixtures.read_rejects(direct_uri)
        )
        dask_meta = base.read_json(os.path.join(dask_uri, "metadata.json"))
        direct_meta = base.read_json(os.path.join(direct_uri, "metadata.json"))
        self.assertEqual(dask_meta["runner"], "DaskRunner")
        self.assertEqual(dask_meta["beam_metrics"], {})  # Dask keeps none.
        for key in (
            "discovered",
            "written",
            "rejected",
            "splits",
            "fingerprint",
        ):
            self.assertEqual(dask_meta[key], direct_meta[key], key)
        self.assertEqual(
            dask_meta["written"] + dask_meta["rejected"],
            dask_meta["discovered"],
        )
        # The work really ran on both of the cluster's worker processes.
        with distributed.Client(self.cluster) as client:
            executed = client.run(
                lambda dask_worker: dask_worker.state.executed_count
            )
        self.assertLen(executed, 2)
        for count in executed.values():
            self.assertGreater(count, 0)


if __name__ == "__main__":
    absltest.main()
