"""Malformed or inconsistent hardware files fail with a message naming the file and the field."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwmodels import PresetError, get_device, get_platform, load_device_file, load_link_file, load_platform_file
from hwmodels.devices import parse_quantity

GOOD_DEVICE = """
name = "my-gpu"
kind = "gpu"
weights_tier = "hbm"
source = "test"
tdp = { value = "500 W", source = "test datasheet" }
static_power = { value = "100 W", assumption = true, source = "assumption" }
[peak_flops]
bf16 = { value = "500 TFLOP/s", source = "test datasheet" }
[energy_per_flop]
bf16 = { value = "0.5 pJ/FLOP", assumption = true }
[[tier]]
name = "l2"
capacity = { value = "40 MB", source = "test" }
bandwidth = { value = "6 TB/s", source = "test" }
latency = { value = "200 ns", source = "test" }
energy_per_byte = { value = "1 pJ/bit", source = "test" }
[[tier]]
name = "hbm"
capacity = { value = "96 GiB", source = "test" }
bandwidth = { value = "3000 GB/s", source = "test" }
latency = { value = "0.5 us", source = "test" }
energy_per_byte = { value = 32, unit = "pJ/B", source = "test" }
"""

GOOD_LINK = """
name = "my-link"
source = "test"
duplex = true
bandwidth = { value = "50 GB/s", source = "test" }
latency = { value = "8 us", source = "test" }
energy_per_byte = { value = "5 pJ/bit", assumption = true }
efficiency_points = [
  { bytes = "1 MB", achieved = "20 GB/s", source = "test" },
  { bytes = "1 GB", achieved = "40 GB/s", source = "test" },
]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def expect_error(loader: Callable[[Path], object], path: Path, *fragments: str) -> str:
    with pytest.raises(PresetError) as info:
        loader(path)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_good_files_load(tmp_path: Path) -> None:
    dev = load_device_file(write(tmp_path, "dev.toml", GOOD_DEVICE))
    assert dev.name == "my-gpu"
    assert dev.tier("hbm").capacity_bytes == 96 * 2**30
    assert dev.tier("hbm").energy_J_per_byte == pytest.approx(32e-12)
    assert dev.tier("l2").energy_J_per_byte == pytest.approx(8e-12)
    assert dev.flops("bf16") == 500e12
    assert "static_power" in dev.assumptions and "tdp" not in dev.assumptions
    link = load_link_file(write(tmp_path, "link.toml", GOOD_LINK))
    assert link.efficiency_points == ((1e6, pytest.approx(0.4)), (1e9, pytest.approx(0.8)))  # achieved / 50 GB/s
    assert link.achieved_points == ((1e6, pytest.approx(20e9)), (1e9, pytest.approx(40e9)))


def test_missing_field(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('tdp = { value = "500 W", source = "test datasheet" }\n', "")
    expect_error(load_device_file, write(tmp_path, "d.toml", text), "'tdp'", "missing")


def test_missing_tier_field(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('latency = { value = "0.5 us", source = "test" }\n', "")
    expect_error(load_device_file, write(tmp_path, "d.toml", text), "tier[1] (hbm).latency", "missing")


def test_negative_bandwidth(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('"3000 GB/s"', '"-3000 GB/s"')
    expect_error(load_device_file, write(tmp_path, "d.toml", text), "tier[1] (hbm).bandwidth", "> 0")
    link = GOOD_LINK.replace('"50 GB/s"', '"-50 GB/s"')
    expect_error(load_link_file, write(tmp_path, "l.toml", link), "'bandwidth'", "> 0")


def test_unknown_unit(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('"3000 GB/s"', '"3000 GB/fortnight"')
    msg = expect_error(
        load_device_file, write(tmp_path, "d.toml", text), "tier[1] (hbm).bandwidth", "unknown unit 'GB/fortnight'"
    )
    assert "GB/s" in msg  # lists the valid units


def test_unit_of_wrong_dimension(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('capacity = { value = "96 GiB"', 'capacity = { value = "96 GB/s"')
    expect_error(load_device_file, write(tmp_path, "d.toml", text), "tier[1] (hbm).capacity", "unknown unit 'GB/s'")


def test_missing_unit(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('tdp = { value = "500 W"', "tdp = { value = 500")
    expect_error(load_device_file, write(tmp_path, "d.toml", text), "'tdp'", "missing unit")


def test_number_without_source(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('tdp = { value = "500 W", source = "test datasheet" }', 'tdp = { value = "500 W" }')
    expect_error(load_device_file, write(tmp_path, "d.toml", text), "'tdp'", "source")
    bare = GOOD_DEVICE.replace('tdp = { value = "500 W", source = "test datasheet" }', 'tdp = "500 W"')
    expect_error(load_device_file, write(tmp_path, "e.toml", bare), "'tdp'", "source")


def test_tier_larger_than_the_one_below(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('"40 MB"', '"200 GiB"')
    expect_error(load_device_file, write(tmp_path, "d.toml", text), "'tier'", "'l2'", "larger", "'hbm'")


def test_tier_slower_than_the_one_below(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('"6 TB/s"', '"1 TB/s"')
    expect_error(load_device_file, write(tmp_path, "d.toml", text), "'tier'", "'l2'", "slower")


def test_weights_tier_not_a_tier(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('weights_tier = "hbm"', 'weights_tier = "ddr"')
    expect_error(load_device_file, write(tmp_path, "d.toml", text), "'weights_tier'", "'ddr'")


def test_unknown_kind_and_dtype_and_key(tmp_path: Path) -> None:
    expect_error(load_device_file, write(tmp_path, "a.toml", GOOD_DEVICE.replace('"gpu"', '"tpu"')), "'kind'", "tpu")
    bad_dtype = GOOD_DEVICE.replace('bf16 = { value = "500 TFLOP/s"', 'bf12 = { value = "500 TFLOP/s"')
    expect_error(load_device_file, write(tmp_path, "b.toml", bad_dtype), "peak_flops.bf12", "unknown dtype")
    extra = GOOD_DEVICE.replace('source = "test"\n', 'source = "test"\ncolour = "green"\n', 1)
    expect_error(load_device_file, write(tmp_path, "c.toml", extra), "colour")


def test_static_power_above_tdp(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('"100 W"', '"900 W"')
    expect_error(load_device_file, write(tmp_path, "d.toml", text), "'static_power'", "exceeds")


def test_invalid_toml(tmp_path: Path) -> None:
    expect_error(load_device_file, write(tmp_path, "d.toml", "name = [unclosed"), "invalid TOML")


def test_missing_file(tmp_path: Path) -> None:
    expect_error(load_device_file, tmp_path / "nope.toml", "not found")


def test_link_points_above_peak_or_unsorted(tmp_path: Path) -> None:
    above = GOOD_LINK.replace('achieved = "40 GB/s"', 'achieved = "60 GB/s"')
    expect_error(load_link_file, write(tmp_path, "a.toml", above), "efficiency_points[1].achieved", "exceeds")
    unsorted = GOOD_LINK.replace('bytes = "1 GB"', 'bytes = "1 KB"')
    expect_error(load_link_file, write(tmp_path, "b.toml", unsorted), "efficiency_points", "ascending")
    nosource = GOOD_LINK.replace('achieved = "20 GB/s", source = "test"', 'achieved = "20 GB/s"')
    expect_error(load_link_file, write(tmp_path, "c.toml", nosource), "efficiency_points[0]", "source")
    noduplex = GOOD_LINK.replace("duplex = true\n", "")
    expect_error(load_link_file, write(tmp_path, "d.toml", noduplex), "'duplex'")
    both = GOOD_LINK.replace('achieved = "20 GB/s",', 'achieved = "20 GB/s", efficiency = 0.4,')
    expect_error(load_link_file, write(tmp_path, "e.toml", both), "efficiency_points[0]", "exactly one of")
    over = GOOD_LINK.replace('achieved = "20 GB/s"', "efficiency = 1.5")
    expect_error(load_link_file, write(tmp_path, "f.toml", over), "efficiency_points[0].efficiency", "(0, 1]")


def test_link_points_may_be_given_as_efficiencies(tmp_path: Path) -> None:
    """A point given as an efficiency loads as the same link as the achieved rate it stands for."""
    as_eff = GOOD_LINK.replace('achieved = "20 GB/s"', "efficiency = 0.4")
    a = load_link_file(write(tmp_path, "a.toml", GOOD_LINK))
    b = load_link_file(write(tmp_path, "b.toml", as_eff))
    assert b.efficiency_points[0] == (1e6, 0.4)
    assert [e for _, e in b.efficiency_points] == pytest.approx([e for _, e in a.efficiency_points])


def test_fpga_needs_fpga_table(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace('kind = "gpu"', 'kind = "fpga"')
    expect_error(load_device_file, write(tmp_path, "d.toml", text), "'fpga'", "missing")
    gpu_with_fpga = GOOD_DEVICE + '[fpga]\ndsp_count = { value = 10, source = "x" }\n'
    expect_error(load_device_file, write(tmp_path, "e.toml", gpu_with_fpga), "'fpga'", "only valid")


def test_platform_files(tmp_path: Path) -> None:
    write(tmp_path, "dev.toml", GOOD_DEVICE)
    write(tmp_path, "link.toml", GOOD_LINK)
    text = """
name = "my-box"
source = "test"
cost_per_hour = { value = "2 USD/h", assumption = true }
[accelerator]
device = "dev.toml"
count = 4
[host]
device = "spr-2s"
link = "link.toml"
[peer]
link = "nvlink4"
"""
    plat = load_platform_file(write(tmp_path, "p.toml", text))
    assert plat.n_accelerators == 4 and plat.accelerators[0].name == "my-gpu"
    assert plat.host is not None and plat.host.name == "spr-2s"
    assert plat.host_link is not None and plat.host_link.name == "my-link"
    assert get_platform(str(tmp_path / "p.toml")) == plat  # a path works where a name does
    no_peer = text.replace('[peer]\nlink = "nvlink4"\n', "")
    expect_error(load_platform_file, write(tmp_path, "q.toml", no_peer), "'peer'", "4 accelerators")
    unknown = text.replace('device = "spr-2s"', 'device = "spr-9s"')
    msg = expect_error(load_platform_file, write(tmp_path, "r.toml", unknown), "host.device", "spr-9s")
    assert "h100-sxm" in msg  # lists the valid presets
    bad_count = text.replace("count = 4", "count = 0")
    expect_error(load_platform_file, write(tmp_path, "s.toml", bad_count), "accelerator.count")
    broken_dev = write(tmp_path, "broken.toml", GOOD_DEVICE.replace('"3000 GB/s"', '"3000 parsecs"'))
    nested = text.replace('device = "dev.toml"', f'device = "{broken_dev.name}"')
    msg = expect_error(load_platform_file, write(tmp_path, "t.toml", nested), "accelerator.device")
    assert str(broken_dev) in msg and re.search(r"bandwidth", msg)


def test_get_device_accepts_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, "x.toml", GOOD_DEVICE)
    assert get_device(str(path)).name == "my-gpu"


@pytest.mark.parametrize(
    ("text", "dimension", "expected"),
    [
        ("80 GiB", "bytes", 80 * 2**30),
        ("40 MB", "bytes", 40e6),
        ("11 Mb", "bytes", 11e6 / 8),
        ("3350 GB/s", "bandwidth", 3350e9),
        ("64 Gb/s", "bandwidth", 8e9),
        ("1.5 TiB/s", "bandwidth", 1.5 * 2**40),
        ("5 us", "time", 5e-6),
        ("200 ns", "time", 2e-7),
        ("989 TFLOP/s", "flops", 989e12),
        ("1979 TOPS", "flops", 1979e12),
        ("4 pJ/bit", "energy_per_byte", 32e-12),
        ("700 W", "power", 700.0),
        ("0.3 pJ/FLOP", "energy_per_flop", 0.3e-12),
        ("225 MHz", "frequency", 225e6),
        ("1_728", "count", 1728),
        ("2.5 USD/h", "usd_per_hour", 2.5),
        ("1e3 B", "bytes", 1000.0),
    ],
)
def test_parse_quantity_units(text: str, dimension: str, expected: float) -> None:
    assert parse_quantity(text, None, dimension, where="f") == pytest.approx(expected)


def test_parse_quantity_errors() -> None:
    with pytest.raises(PresetError, match=r"where: unknown unit 'GB/s'"):
        parse_quantity("3 GB/s", None, "bytes", where="where")
    with pytest.raises(PresetError, match="cannot parse"):
        parse_quantity("fast", None, "bandwidth", where="where")
    with pytest.raises(PresetError, match="has unit"):
        parse_quantity("3 GB/s", "TB/s", "bandwidth", where="where")
    with pytest.raises(PresetError, match="boolean"):
        parse_quantity(True, None, "count", where="where")
    assert parse_quantity(3, "GB/s", "bandwidth", where="w") == 3e9


VALUE = re.compile(r'value = ("[^"]*"|[-0-9.e]+)')


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    index=st.integers(min_value=0, max_value=30),
    replacement=st.one_of(
        st.text(alphabet="0123456789.-e GBMKTiWHzsnupJ/FLOPbit", max_size=12).map(lambda t: f'"{t}"'),
        st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
        st.sampled_from(['"-1 GB/s"', '"0 W"', '"1e400 B"', '"nan GB/s"', '"inf W"', "true", "[]", "{}"]),
    ),
)
def test_any_corrupted_value_gives_a_preset_error(tmp_path: Path, index: int, replacement: str) -> None:
    """Fuzz: replacing any quantity's value with junk either still loads (a valid quantity) or raises
    `PresetError` naming the file, never another exception."""
    matches = list(VALUE.finditer(GOOD_DEVICE))
    m = matches[index % len(matches)]
    text = GOOD_DEVICE[: m.start(1)] + replacement + GOOD_DEVICE[m.end(1) :]
    path = write(tmp_path, f"fuzz-{abs(hash(text))}.toml", text)
    try:
        dev = load_device_file(path)
    except PresetError as exc:
        assert str(path) in str(exc)
    else:
        assert all(t.bandwidth_Bps > 0 for t in dev.tiers)


def test_an_edited_file_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path, "dev.toml", GOOD_DEVICE)
    assert load_device_file(path).tdp_W == 500
    path.write_text(GOOD_DEVICE.replace('"500 W"', '"650 W"'))
    assert load_device_file(path).tdp_W == 650
    path.write_text(GOOD_DEVICE.replace('"500 W"', '"-650 W"'))
    with pytest.raises(PresetError, match="tdp"):
        load_device_file(path)
