"""Cloud TPU generations as data, and slice names such as "v3-32".

Source: Google Cloud's TPU documentation, "TPU versions" and the per
version pages (cloud.google.com/tpu/docs/v2, /v3, /v4, /v5e, /v5p and
/system-architecture-tpu-vm): bf16 peak per chip, TensorCores per chip,
chips per host VM. In a slice name the number counts TensorCores for v2,
v3, v4 and v5p, and chips for v5e ("v5litepod-16"). A replica of
`tf.distribute.TPUStrategy` is one TensorCore on v2/v3, and one chip on
v4/v5p (the two cores act as one "megacore") and v5e (one core).
"""

from __future__ import annotations

import dataclasses
import re

# generation: (bf16 peak TFLOP/s per chip, cores per chip,
#              replicas per chip, chips per host, suffix counts)
GENERATIONS: dict[str, dict[str, object]] = {
    "v2": {
        "peak_tflops": 45.0,
        "cores_per_chip": 2,
        "replicas_per_chip": 2,
        "chips_per_host": 4,
        "suffix": "cores",
    },
    "v3": {
        "peak_tflops": 123.0,
        "cores_per_chip": 2,
        "replicas_per_chip": 2,
        "chips_per_host": 4,
        "suffix": "cores",
    },
    "v4": {
        "peak_tflops": 275.0,
        "cores_per_chip": 2,
        "replicas_per_chip": 1,
        "chips_per_host": 4,
        "suffix": "cores",
    },
    "v5e": {
        "peak_tflops": 197.0,
        "cores_per_chip": 1,
        "replicas_per_chip": 1,
        # Single-host slices hold up to 8 chips; larger ones 4 per host.
        "chips_per_host": 4,
        "suffix": "chips",
    },
    "v5p": {
        "peak_tflops": 459.0,
        "cores_per_chip": 2,
        "replicas_per_chip": 1,
        "chips_per_host": 4,
        "suffix": "cores",
    },
}
_ALIASES = {"v5litepod": "v5e"}
_NAME = re.compile(r"^(?P<gen>v2|v3|v4|v5e|v5litepod|v5p)-(?P<n>\d+)$")


@dataclasses.dataclass(frozen=True)
class Topology:
    """One TPU slice.

    Attributes:
      name: the slice name as given ("v3-32").
      generation: "v2", "v3", "v4", "v5e" or "v5p".
      chips: chips in the slice.
      replicas: `TPUStrategy` replicas (`num_replicas_in_sync`).
      hosts: host VMs, each running one input pipeline.
      peak_tflops_per_chip: bf16 peak.
    """

    name: str
    generation: str
    chips: int
    replicas: int
    hosts: int
    peak_tflops_per_chip: float

    @property
    def peak_flops(self) -> float:
        """The slice's bf16 peak in FLOP/s."""
        return self.chips * self.peak_tflops_per_chip * 1e12


def list_generations() -> list[str]:
    """The generations `parse` knows."""
    return list(GENERATIONS)


def parse(name: str) -> Topology:
    """A slice from its name.

    Args:
      name: "<generation>-<count>", e.g. "v3-32", "v4-64", "v5e-16"
        ("v5litepod-16"), "v5p-128".

    Returns:
      The topology.

    Raises:
      ValueError: the name does not parse, or the count is not a whole
        number of chips.
    """
    match = _NAME.match(name.strip().lower())
    if not match:
        raise ValueError(
            f"--tpu_topology={name!r}: expected <generation>-<count> with "
            f"a generation in {list_generations()}, e.g. v3-32 or v4-64."
        )
    gen = _ALIASES.get(match["gen"], match["gen"])
    spec = GENERATIONS[gen]
    count = int(match["n"])
    per_chip = spec["cores_per_chip"] if spec["suffix"] == "cores" else 1
    if count < per_chip or count % per_chip:
        raise ValueError(
            f"--tpu_topology={name!r}: {gen} counts {spec['suffix']}, "
            f"{per_chip} per chip; {count} is not a whole number of chips."
        )
    chips = count // per_chip
    per_host = spec["chips_per_host"]
    if gen == "v5e" and chips <= 8:
        per_host = chips  # One host holds the whole small slice.
    return Topology(
        name=name,
        generation=gen,
        chips=chips,
        replicas=chips * spec["replicas_per_chip"],
        hosts=max(1, -(-chips // per_host)),
        peak_tflops_per_chip=spec["peak_tflops"],
    )
