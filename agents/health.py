"""Device health from what the shims read: fatal XIDs, uncorrectable ECC, row-remap failure, vendor verdicts.

The rule is deliberately simple and conservative: a device is ``unhealthy`` when it has shown a fault that
NVIDIA (or the vendor) says needs a GPU reset, node drain or RMA; ``unknown`` when the shim could not read it;
``healthy`` otherwise. The API decides what an unhealthy device means for the node (issue #7, point 7)::

    >>> from agents.shims.base import DeviceSample
    >>> s = DeviceSample(vendor="nvidia", index=0, uuid="GPU-1", sampled_monotonic_s=0, sampled_wall_time=0,
    ...                  xid_events=[79])
    >>> evaluate(s).health.value, evaluate(s).health_reasons
    ('unhealthy', ['fatal XID 79: GPU has fallen off the bus'])
"""

from __future__ import annotations

from agents.protocol import DeviceSample, Health

# XIDs that take a device out of service. Sources: NVIDIA "XID Errors" and the Xid catalog for Ampere and newer
# (https://docs.nvidia.com/deploy/xid-errors/index.html, .../xid-errors/analyzing-xid-catalog.html, whose
# "resolution bucket" for these is RESET_GPU / RESTART_BM / CONTACT_SUPPORT rather than RESTART_APP), and
# "Dynamic Page Retirement" (https://docs.nvidia.com/deploy/dynamic-page-retirement/visibility.html) for 48/63/64.
# Application-caused XIDs (13, 31, 43, 45 ...) are *not* here: they say a job crashed, not that the GPU is bad.
FATAL_XIDS: dict[int, str] = {
    48: "double-bit (uncorrectable) ECC error",
    63: "ECC page retirement / row remapping event; reset required to apply",
    64: "ECC page retirement / row remapper recording failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
}


def evaluate(sample: DeviceSample, sticky_reasons: list[str] | None = None) -> DeviceSample:
    """Return ``sample`` with ``health`` and ``health_reasons`` set from its own readings.

    The shim's own verdict is kept: ``unhealthy`` from the vendor (npu-smi "Alarm", GPU lost) stays unhealthy,
    ``unknown`` (tool timed out) stays unknown unless a fatal fault is also known. ``sticky_reasons`` are faults
    seen in earlier samples (an XID arrives once, but the device stays bad until someone resets it); the agent
    keeps them per device and passes them in.
    """
    fatal = _unique([*(sticky_reasons or []), *fatal_reasons(sample)])
    reasons = _unique([*fatal, *sample.health_reasons])
    if fatal or sample.health == Health.UNHEALTHY:
        health = Health.UNHEALTHY
    elif sample.health == Health.UNKNOWN:
        health = Health.UNKNOWN
    else:
        health = Health.HEALTHY
    return sample.model_copy(update={"health": health, "health_reasons": reasons})


def fatal_reasons(sample: DeviceSample) -> list[str]:
    """The faults in ``sample`` that should stick to the device until it is reset."""
    reasons = [f"fatal XID {x}: {FATAL_XIDS[x]}" for x in sample.xid_events if x in FATAL_XIDS]
    if "double-bit" in sample.ecc_events:
        # An NVML double-bit ECC event is an uncorrectable memory error: the same verdict as XID 48.
        reasons.append("double-bit (uncorrectable) ECC error event")
    if sample.ecc_uncorrectable_total:
        reasons.append(f"{sample.ecc_uncorrectable_total} uncorrectable ECC errors")
    if sample.remap_failure:
        reasons.append("row remapping failed (no spare rows left)")
    return reasons


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
