r"""ExampleGen benchmark: per-stage image throughput, Beam's overhead, scaling.

Prints one JSON object. Costs are measured in CPU time (this process and
its worker processes), which other jobs on a shared machine do not
inflate; only the scaling figure is wall-clock and needs idle cores.

- `stages_images_per_cpu_s`: images per CPU-second (one core) for decode,
  resize, encode, the whole conversion (`images.convert`: decode with DCT
  draft + resize + encode) and write (tf.Example + TFRecord, NONE and
  GZIP), on generated photo-like JPEGs of ImageNet-like size.
- `compression`: bytes written and records per CPU-second of a
  trainer-like read (TFRecordDataset -> parse -> decode_jpeg -> central
  crop + resize -> batch) for NONE and GZIP, plus a read-only pass that
  isolates inflation.
- `beam`: the ExampleGen pipeline against a plain loop doing the same
  work (read, hash, convert, serialize, shard, write) on one core: on
  the default runner with 1 and 2 worker processes, and in process.
  `overhead_cpu_marginal` compares the CPU per image with the fixed
  start-up excluded (the N extra images of a 2N run); the `total` figure
  includes start-up. `scaling_1_to_2_workers` is the wall-clock speed-up
  of the N extra images with 2 worker processes.

    bazel run //bench:example_gen_bench -- --num_images=800
    bazel run //bench:example_gen_bench -- --short   # a smoke run

The default compression (NONE) was set from these figures; see the
comment above `COMPRESSIONS` in components/example_gen/config.py.
The scaling figure carries the other processes' load on a shared machine
(`load_average_*` in the output); the CPU-time figures much less so.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from artifacts import examples as examples_lib
from components import base
from components.example_gen import component, images, records
from components.example_gen import config as config_lib

flags.DEFINE_integer("num_images", 800, "Images per timed pass (N).")
flags.DEFINE_integer("height", 375, "Generated image height.")
flags.DEFINE_integer("width", 500, "Generated image width.")
flags.DEFINE_integer("resize_shorter_side", 256, "Resize target (0 = off).")
flags.DEFINE_integer("jpeg_quality", 95, "Re-encode quality.")
flags.DEFINE_boolean("short", False, "A quick run: 40 images, small sizes.")
flags.DEFINE_boolean("skip_beam", False, "Only the single-process stages.")
flags.DEFINE_integer("repeats", 3, "Beam/loop runs per figure (minimum).")

FLAGS = flags.FLAGS


def photo(height: int, width: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth colour field, texture, a few shapes."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    pixels = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.BICUBIC),
        dtype=np.float32,
    )
    pixels += rng.normal(0, 10, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, width), rng.integers(0, height)
        r = rng.integers(8, max(9, min(width, height) // 3))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes.

    CPU time, unlike wall time, does not grow when other jobs share the
    cores, so per-image costs stay comparable on a busy machine.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _wait_for_children(timeout: float = 60.0) -> None:
    """Waits until Beam's worker processes have exited (and been reaped).

    Their CPU time reaches RUSAGE_CHILDREN only then.
    """
    me = str(os.getpid())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                alive = True
                break
        if not alive:
            return
        time.sleep(0.1)


def _timed(fn, items):
    """Applies `fn` to `items`; returns the outputs and the CPU seconds."""
    start = cpu_seconds()
    out = [fn(x) for x in items]
    return out, cpu_seconds() - start


def stage_throughput(jpegs: list[bytes], shorter: int, quality: int) -> dict:
    """Images/s on one core for each stage of the conversion."""
    import tensorflow as tf

    def decode(data):
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    decoded, t_decode = _timed(decode, jpegs)

    def resize(image):
        w, h = image.size
        s = shorter / min(w, h)
        return image.resize((round(w * s), round(h * s)), Image.BICUBIC)

    resized, t_resize = _timed(resize, decoded) if shorter else (decoded, 0.0)

    def encode(image):
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        return out.getvalue()

    encoded, t_encode = _timed(encode, resized)
    options = images.ImageOptions(
        resize_shorter_side=shorter, jpeg_quality=quality
    )
    converted, t_convert = _timed(lambda d: images.convert(d, options), jpegs)
    examples = [
        examples_lib.make_example(
            c.jpeg, c.height, c.width, [i % 1000], None, f"{i}"
        )
        for i, c in enumerate(converted)
    ]
    tmp = tempfile.mkdtemp()
    write = {}
    for compression in (config_lib.NONE, config_lib.GZIP):
        path = os.path.join(tmp, f"shard-{compression}")
        opts = tf.io.TFRecordOptions(
            compression_type="GZIP" if compression == config_lib.GZIP else ""
        )
        start = cpu_seconds()
        with tf.io.TFRecordWriter(path, opts) as writer:
            for example in examples:
                writer.write(example)
        write[compression] = cpu_seconds() - start
    shutil.rmtree(tmp)
    n = len(jpegs)
    return {
        "decode": _rate(n, t_decode),
        "resize": _rate(n, t_resize) if shorter else None,
        "encode": _rate(n, t_encode),
        "convert_with_draft": _rate(n, t_convert),
        "write_none": _rate(n, write[config_lib.NONE]),
        "write_gzip": _rate(n, write[config_lib.GZIP]),
        "mean_output_jpeg_bytes": int(
            np.mean([len(c.jpeg) for c in converted])
        ),
        "examples": examples,
    }


def compression_figures(examples: list[bytes], repeats: int = 5) -> dict:
    """Size and trainer-like read speed of NONE against GZIP shards.

    The two formats are timed in alternation, best of `repeats`, so that
    a busy machine penalizes both alike; at least 400 records are read
    (the examples repeated) so that tracing is a small share.
    """
    import tensorflow as tf

    from components import preprocessing

    count = max(400, len(examples))
    examples = (examples * (1 + count // len(examples)))[:count]

    tmp = tempfile.mkdtemp()
    figures, datasets = {}, {}
    for compression in (config_lib.NONE, config_lib.GZIP):
        tf_name = "GZIP" if compression == config_lib.GZIP else ""
        paths = []
        for shard in range(4):
            path = os.path.join(tmp, f"{compression}-{shard}")
            with tf.io.TFRecordWriter(
                path, tf.io.TFRecordOptions(tf_name)
            ) as w:
                for example in examples[shard::4]:
                    w.write(example)
            paths.append(path)
        size = sum(os.path.getsize(p) for p in paths)

        def dataset(decode, paths=paths, tf_name=tf_name):
            ds = tf.data.TFRecordDataset(paths, compression_type=tf_name)
            if decode:
                ds = ds.map(examples_lib.parse)
                ds = ds.map(
                    lambda f: preprocessing.preprocess_for_eval(f["image"], 224)
                )
            ds = ds.batch(32)
            options = tf.data.Options()
            options.threading.private_threadpool_size = 1  # One core.
            return ds.with_options(options)

        figures[compression] = {"bytes": size}
        datasets[compression] = dataset
    for name, decode in (("read_only", False), ("read_decode", True)):
        best = {c: float("inf") for c in datasets}
        for _ in range(repeats):
            for compression, dataset in datasets.items():
                start = cpu_seconds()
                for _ in dataset(decode):
                    pass
                elapsed = cpu_seconds() - start
                best[compression] = min(best[compression], elapsed)
        for compression in datasets:
            figures[compression][name] = _rate(len(examples), best[compression])
    shutil.rmtree(tmp)
    none, gzip = figures[config_lib.NONE], figures[config_lib.GZIP]
    figures["gzip_size_saving"] = round(1 - gzip["bytes"] / none["bytes"], 4)
    figures["gzip_read_decode_slowdown"] = round(
        none["read_decode"] / gzip["read_decode"] - 1, 4
    )
    return figures


def _write_folder(root: str, jpegs: list[bytes]) -> None:
    for i, data in enumerate(jpegs):
        path = os.path.join(root, f"c{i % 10}", f"{i}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def plain_loop(root: str, out: str, config) -> tuple[float, float]:
    """The pipeline's work without Beam, on one core: (wall, CPU) seconds."""
    import tensorflow as tf

    options = images.ImageOptions(
        resize_shorter_side=config.resize_shorter_side,
        jpeg_quality=config.jpeg_quality,
    )
    wall, cpu = time.perf_counter(), cpu_seconds()
    classes = sorted(os.listdir(root))
    shards: dict[int, list] = {}
    for label, cls in enumerate(classes):
        for name in sorted(os.listdir(os.path.join(root, cls))):
            with tf.io.gfile.GFile(os.path.join(root, cls, name), "rb") as f:
                data = f.read()
            data_digest = records.digest(data)
            image = images.convert(data, options)
            source_id = f"{cls}/{name}"
            example = examples_lib.make_example(
                image.jpeg, image.height, image.width, [label], None, source_id
            )
            shard = records.stable_hash(0, "train", data_digest)
            order = records.stable_hash(0, source_id, data_digest)
            shards.setdefault(shard % config.num_shards, []).append(
                (order, example)
            )
    os.makedirs(out, exist_ok=True)
    for shard, batch in shards.items():
        with tf.io.TFRecordWriter(os.path.join(out, f"{shard}")) as writer:
            for _, example in sorted(batch):
                writer.write(example)
    return time.perf_counter() - wall, cpu_seconds() - cpu


# The Beam set-ups compared with the plain loop: the default runner with
# one and two worker processes, and the same runner executing in this
# process (one core, no worker start-up, no inter-process data plane).
MODES = {
    "beam_1_worker": (1, ()),
    "beam_2_workers": (2, ()),
    "beam_in_process": (1, ("--direct_running_mode=in_memory",)),
}


def beam_run(root: str, out: str, mode: str, config) -> tuple[float, float]:
    """The ExampleGen component in one of `MODES`: (wall, CPU) seconds.

    CPU counts the driver and the worker processes.
    """
    workers, args = MODES[mode]
    run_config = config_lib.ExampleGenConfig(
        **{
            **config.__dict__,
            "input": root,
            "num_workers": workers,
            "beam_pipeline_args": args,
        }
    )
    _wait_for_children()
    wall, cpu = time.perf_counter(), cpu_seconds()
    base.execute(component.ExampleGen(), {}, {"examples": out}, run_config)
    wall = time.perf_counter() - wall
    _wait_for_children()
    return wall, cpu_seconds() - cpu


def _best(old, new):
    return new if old is None else (min(old[0], new[0]), min(old[1], new[1]))


def beam_figures(jpegs: list[bytes], config, repeats: int) -> dict:
    """Beam against the plain loop at N and 2N images (see `MODES`).

    The difference between the 2N and N runs is the cost of N images
    without the fixed start-up (worker processes, imports, planning).
    """
    n = len(jpegs) // 2
    sizes = (n, 2 * n)
    tmp = tempfile.mkdtemp()
    roots = {}
    for size in sizes:
        roots[size] = os.path.join(tmp, f"in{size}")
        _write_folder(roots[size], jpegs[:size])
    times: dict[str, dict[int, tuple[float, float]]] = {
        name: {} for name in ("plain_loop", *MODES)
    }
    for r in range(repeats):
        # Each figure is the minimum over the repeats (wall and CPU
        # separately): fixed costs such as worker start-up and gRPC
        # polling vary with the machine's load, and the minimum is the
        # run they disturbed least.
        for size in sizes:
            out = os.path.join(tmp, f"loop{size}-{r}")
            run = plain_loop(roots[size], out, config)
            times["plain_loop"][size] = _best(
                times["plain_loop"].get(size), run
            )
            for mode in MODES:
                out = os.path.join(tmp, f"{mode}{size}-{r}")
                run = beam_run(roots[size], out, mode, config)
                times[mode][size] = _best(times[mode].get(size), run)
    shutil.rmtree(tmp)

    def marginal(name, clock):  # clock 0 = wall, 1 = CPU.
        return times[name][2 * n][clock] - times[name][n][clock]

    loop_cpu = marginal("plain_loop", 1)
    return {
        "images": list(sizes),
        "wall_seconds": {
            k: [round(v[s][0], 2) for s in sizes] for k, v in times.items()
        },
        "cpu_seconds": {
            k: [round(v[s][1], 2) for s in sizes] for k, v in times.items()
        },
        "cpu_ms_per_image": {
            k: round(1000 * marginal(k, 1) / n, 2) for k in times
        },
        # Per-image CPU over the loop's, start-up excluded.
        "overhead_cpu_marginal": {
            mode: round(marginal(mode, 1) / loop_cpu, 3)
            for mode in ("beam_1_worker", "beam_in_process")
        },
        # Whole 2N runs, start-up included.
        "overhead_cpu_total_1_worker": round(
            times["beam_1_worker"][2 * n][1] / times["plain_loop"][2 * n][1], 3
        ),
        "startup_cpu_seconds_1_worker": round(
            times["beam_1_worker"][n][1] - marginal("beam_1_worker", 1), 2
        ),
        "wall_images_per_s": {k: _rate(n, marginal(k, 0)) for k in times},
        # Wall-clock speed-up of the N extra images; needs 2 idle cores.
        "scaling_1_to_2_workers": round(
            marginal("beam_1_worker", 0) / marginal("beam_2_workers", 0), 3
        ),
    }


def main(argv: list[str]) -> None:
    del argv
    n = 40 if FLAGS.short else FLAGS.num_images
    height, width = (240, 320) if FLAGS.short else (FLAGS.height, FLAGS.width)
    shorter = (
        min(FLAGS.resize_shorter_side, 160)
        if FLAGS.short
        else (FLAGS.resize_shorter_side)
    )
    jpegs = [photo(height, width, seed) for seed in range(2 * n)]
    result = {
        "setup": {
            "num_images": n,
            "image_size": [height, width],
            "mean_input_jpeg_bytes": int(np.mean([len(j) for j in jpegs])),
            "resize_shorter_side": shorter,
            "jpeg_quality": FLAGS.jpeg_quality,
            "cpu_count": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        }
    }
    stages = stage_throughput(jpegs[:n], shorter, FLAGS.jpeg_quality)
    examples = stages.pop("examples")
    result["stages_images_per_cpu_s"] = stages
    result["compression"] = compression_figures(examples)
    if not FLAGS.skip_beam:
        config = config_lib.ExampleGenConfig(
            source=config_lib.IMAGE_FOLDER,
            input="-",
            validation_per_class=0,
            num_shards=4,
            resize_shorter_side=shorter,
            jpeg_quality=FLAGS.jpeg_quality,
        )
        repeats = 1 if FLAGS.short else FLAGS.repeats
        result["beam"] = beam_figures(jpegs, config, repeats)
        result["beam"]["repeats"] = repeats
    result["setup"]["load_average_at_end"] = [
        round(x, 2) for x in os.getloadavg()
    ]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    app.run(main)
