"""Sweep specs: a TOML file naming cases, a base preset and parameter axes; the grid they span.

A spec reads::

    cases = ["data/*/", "more/P017"]     # TrackRAD case folders or globs, relative to this file
    preset = "bspline_ncc"               # base preset (optional; an axis may vary it instead)
    repeats = 1                          # runs per (case, setting), optional
    starts = [0, 10, 20]                 # frames tracking starts from, optional (default [0])

    [set]                                # fixed for every setting, optional
    MaximumNumberOfIterations = [60, 60, 60]

    [axes]                               # the grid is the product of these lists
    FinalGridSpacingInPhysicalUnits = [8, 16]
    roi = [true, false]

A name is either an elastix parameter (checked with
:func:`regtrack.parameters.check_parameter_names`) or a field of
:class:`regtrack.tracking.TrackerSettings` (``preset``, ``roi``, ``roi_margin_mm``, ...).
Every problem is reported before anything runs, as a ValueError naming the spec's line.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import hashlib
import itertools
import json
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Setting", "SweepSpec", "SweepTask", "load_sweep_spec", "parse_sweep_spec"]

#: Top-level keys of a spec.
SPEC_KEYS = ("cases", "preset", "repeats", "starts", "set", "axes", "name")
#: Words that mean None for an optional TrackerSettings field (TOML has no null).
_NONE_WORDS = ("none", "auto", "default", "preset")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Setting:
    """One point of the grid: every value that differs from regtrack's defaults.

    Attributes
    ----------
    id : str
        ``s`` + 10 hex digits of a hash of ``values``: the same values give the same id in any
        spec, whatever the order of the axes, so results of an extended grid line up.
    values : dict
        Name to value for the preset, the ``[set]`` values and this point's axis values.
    axes : dict
        This point's axis values only (what tells it apart from its neighbours).
    """

    id: str
    values: dict
    axes: dict

    @property
    def label(self) -> str:
        """Short readable ``name=value`` list of the axis values."""
        return " ".join(f"{k}={_show(v)}" for k, v in self.axes.items()) or "base"

    def tracker_settings(self):
        """The :class:`regtrack.tracking.TrackerSettings` of this setting."""
        from regtrack.tracking import TrackerSettings

        options, overrides = {}, {}
        for name, value in self.values.items():
            if name in regtrack_options():
                options[name] = None if _is_none_word(name, value) else value
            else:
                overrides[name] = value
        return TrackerSettings(overrides=overrides, **options)


@dataclass(frozen=True)
class SweepTask:
    """One unit of work: a case, a setting, a repeat number (0-based) and the frame tracking
    starts from (its label the given mask; :func:`regtrack.io.case_from_frame`)."""

    case: str
    case_dir: str
    setting: Setting
    repeat: int
    start: int = 0

    @property
    def key(self) -> tuple[str, str, int, int]:
        """The results table's primary key."""
        return (self.case, self.setting.id, self.repeat, self.start)

    @property
    def run_name(self) -> str:
        """Folder of the run under ``runs/<case>/``: the setting id, ``_r<k>`` for repeat
        k > 0, ``_f<n>`` for a start at frame n > 0."""
        repeat = f"_r{self.repeat}" if self.repeat else ""
        start = f"_f{self.start}" if self.start else ""
        return f"{self.setting.id}{repeat}{start}"


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec.

    Attributes
    ----------
    path : Path
        The spec file (relative case paths are resolved against its folder).
    text : str
        The file's text, kept with the results.
    cases : dict of str to Path
        Case name (folder name) to case folder, sorted by name.
    base : dict
        Values shared by every setting (``preset`` and the ``[set]`` table).
    axes : dict of str to list
        Axis name to its values, in file order.
    repeats : int
    starts : tuple of int
        Frames each (case, setting, repeat) is tracked from; (0,) unless the spec says.
    name : str
    """

    path: Path
    text: str
    cases: dict[str, Path]
    base: dict = field(default_factory=dict)
    axes: dict[str, list] = field(default_factory=dict)
    repeats: int = 1
    starts: tuple[int, ...] = (0,)
    name: str = ""

    def settings(self) -> list[Setting]:
        """Every setting of the grid: the product of the axes, first axis slowest."""
        return expand_grid(self.base, self.axes)

    def tasks(self) -> list[SweepTask]:
        """Every (case, setting, repeat, start), case-major so each case's runs sit together."""
        settings = self.settings()
        return [
            SweepTask(case, str(folder), setting, repeat, start)
            for case, folder in self.cases.items()
            for setting in settings
            for repeat in range(self.repeats)
            for start in self.starts
        ]


def regtrack_options() -> tuple[str, ...]:
    """TrackerSettings fields a spec may set (``overrides`` is where elastix names go)."""
    from regtrack.tracking import TrackerSettings

    return tuple(f.name for f in dataclasses.fields(TrackerSettings) if f.name != "overrides")


def expand_grid(base: dict, axes: dict[str, list]) -> list[Setting]:
    """The settings spanned by ``axes`` on top of ``base`` (see :meth:`SweepSpec.settings`)."""
    names = list(axes)
    settings = []
    for combo in itertools.product(*(axes[name] for name in names)):
        point = dict(zip(names, combo))
        values = {**base, **point}
        settings.append(Setting(id=setting_id(values), values=values, axes=point))
    return settings


def setting_id(values: dict) -> str:
    """Stable id of a setting's values (order of keys and 8 vs 8.0 do not matter)."""
    canonical = json.dumps(_canonical(values), sort_keys=True, separators=(",", ":"))
    return "s" + hashlib.sha1(canonical.encode()).hexdigest()[:10]


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    if isinstance(value, str) and ("/" in value or value.endswith(".txt")):
        return Path(value).name
    return str(_canonical(value))


def _is_none_word(name: str, value: Any) -> bool:
    """Whether ``value`` spells None for an optional (``... | None``) option ``name``."""
    if not isinstance(value, str) or value.lower() not in _NONE_WORDS:
        return False
    return type(None) in _option_types().get(name, ())


# --------------------------------------------------------------------------- reading


class _SpecText:
    """The spec's text, to point errors at the line of a key."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.lines = path, text.splitlines()

    def error(self, line: int | None, problem: str, fix: str) -> ValueError:
        where = f"sweep spec {self.path}, line {line}" if line else f"sweep spec {self.path}"
        return ValueError(f"{where}: {problem.rstrip('.')}. Fix: {fix}")

    def line_of(self, key: str, section: str | None = None) -> int | None:
        """1-based line where ``key`` is assigned in ``[section]`` (None: top level)."""
        pattern = re.compile(
            rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*="""
        )
        dotted = re.compile(rf"""^\s*{re.escape(section or "")}\s*\.\s*{re.escape(key)}\s*=""")
        current = None
        for number, line in enumerate(self.lines, 1):
            header = re.match(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
            if header:
                current = header.group(1).strip().strip("\"'")
                continue
            in_section = current == section and pattern.match(line)
            # A dotted key at the top level (axes.roi = [...]) also belongs to the section.
            dotted_key = section and current is None and dotted.match(line)
            if in_section or dotted_key:
                return number
        return None

    def last_line(self) -> int | None:
        """The last non-blank line (where "at end of document" errors show up)."""
        filled = [n for n, line in enumerate(self.lines, 1) if line.strip()]
        return filled[-1] if filled else None

    def line_of_text(self, needle: str, start: int | None) -> int | None:
        """First line at or after ``start`` holding ``needle`` as a quoted string."""
        quoted = (f'"{needle}"', f"'{needle}'")
        for number in range(start or 1, len(self.lines) + 1):
            if any(q in self.lines[number - 1] for q in quoted):
                return number
        return start


def load_sweep_spec(path) -> SweepSpec:
    """Read and validate a sweep spec file.

    Parameters
    ----------
    path : str or Path
        The TOML spec (format in the module docstring).

    Returns
    -------
    SweepSpec

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        For a TOML syntax error, an unknown key or parameter, an empty axis, a bad value or
        a case path matching no case folder; the message names the line and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {path} does not exist; check the path.")
    return parse_sweep_spec(path.read_text(), path)


def parse_sweep_spec(text: str, path) -> SweepSpec:
    """Validate spec ``text``; ``path`` names it in errors and anchors relative case paths."""
    path = Path(path)
    source = _SpecText(path, text)
    root = path.resolve().parent  # relative case and preset paths start here
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        found = re.search(r"line (\d+)", str(error))
        line = int(found.group(1)) if found else source.last_line()
        raise source.error(
            line,
            f"TOML syntax error: {error}",
            "correct the TOML syntax there (strings in quotes, lists in [ ], one key = value "
            "per line)",
        ) from None
    _check_top_level(data, source)
    base = _read_base(data, source, root)
    axes = _read_axes(data.get("axes", {}), source, root)
    # The top-level preset is a default an axis may vary; anything else is one or the other.
    clashes = sorted(set(base) & set(axes) - {"preset"})
    if clashes:
        name = clashes[0]
        raise source.error(
            source.line_of(name, "axes"),
            f"{name!r} is both fixed and an axis",
            "keep it in [axes] only, or remove it from [axes] to fix it for every setting",
        )
    cases = _read_cases(data, source, root)
    starts = _read_starts(data, source)
    _check_starts_fit(cases, starts, source)
    return SweepSpec(
        path=path,
        text=text,
        cases=cases,
        base=base,
        axes=axes,
        repeats=_read_repeats(data, source),
        starts=starts,
        name=str(data.get("name", path.stem)),
    )


def _check_top_level(data: dict, source: _SpecText) -> None:
    for key in data:
        if key not in SPEC_KEYS:
            option = key in regtrack_options() or _is_elastix_name(key)
            fix = (
                "put it under [set] to fix it for every setting, or under [axes] to vary it"
                if option
                else f"use one of {', '.join(SPEC_KEYS)}"
            )
            raise source.error(source.line_of(key), f"unknown top-level key {key!r}", fix)
    for key in ("set", "axes"):
        if key in data and not isinstance(data[key], dict):
            raise source.error(
                source.line_of(key),
                f"{key!r} must be a table",
                f"write it as a [{key}] section with one name = value per line",
            )


def _read_repeats(data: dict, source: _SpecText) -> int:
    repeats = data.get("repeats", 1)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise source.error(
            source.line_of("repeats"),
            f"repeats must be a whole number >= 1, got {repeats!r}",
            "write e.g. repeats = 3",
        )
    return repeats


def _read_starts(data: dict, source: _SpecText) -> tuple[int, ...]:
    starts = data.get("starts", [0])
    whole = isinstance(starts, list) and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in starts
    )
    if not whole or not starts or len(set(starts)) != len(starts):
        raise source.error(
            source.line_of("starts"),
            f"starts must be a list of distinct frame numbers >= 0, got {starts!r}",
            "write e.g. starts = [0, 10, 20] (frames a case is tracked from; a start other "
            "than 0 needs the case's labels)",
        )
    return tuple(starts)


def _check_starts_fit(cases: dict[str, Path], starts: tuple[int, ...], source: _SpecText) -> None:
    """Each case can be tracked from its latest start (file headers read, no frame)."""
    if max(starts) == 0:
        return
    from regtrack.io import check_start, read_case

    for name, folder in cases.items():
        try:
            check_start(read_case(folder), max(starts))
        except ValueError as error:
            raise source.error(
                source.line_of("starts"), str(error), f"leave {name} out, or change starts"
            ) from None


def _read_base(data: dict, source: _SpecText, root: Path) -> dict:
    base = {}
    if "preset" in data:
        base["preset"] = _check_value("preset", data["preset"], source, None, root)
    for name, value in data.get("set", {}).items():
        line = source.line_of(name, "set")
        if name == "preset":
            raise source.error(
                line,
                "preset belongs at the top level",
                "move preset = ... above the first [section], or vary it under [axes]",
            )
        base[name] = _check_value(name, value, source, "set", root)
    return base


def _read_axes(table: dict, source: _SpecText, root: Path) -> dict[str, list]:
    axes = {}
    for name, values in table.items():
        line = source.line_of(name, "axes")
        if not isinstance(values, list):
            raise source.error(
                line,
                f"axis {name!r} must be a list of values, got {values!r}",
                f"write {name} = [{_toml(values)}] (or move it to [set] to fix it)",
            )
        if not values:
            raise source.error(
                line,
                f"axis {name!r} is empty, so the grid would be empty",
                "give it at least one value, or delete the line",
            )
        checked = [_check_value(name, v, source, "axes", root) for v in values]
        ids = [setting_id({name: v}) for v in checked]
        if len(set(ids)) != len(ids):
            raise source.error(
                line,
                f"axis {name!r} repeats a value",
                "list each value once (use repeats = N to rerun)",
            )
        axes[name] = checked
    return axes


def _is_elastix_name(name: str) -> bool:
    from regtrack.parameters import check_parameter_names

    try:
        check_parameter_names([name])
    except ValueError:
        return False
    return True


def _suggest(name: str) -> str:
    """'': did you mean ...?' from the regtrack options and elastix's own suggestions."""
    from regtrack.parameters import check_parameter_names

    close = difflib.get_close_matches(name, regtrack_options(), n=2)
    try:
        check_parameter_names([name])
    except ValueError as error:  # its message names the closest elastix parameters
        close += re.findall(r"'(\w+)'", str(error).partition("Did you mean")[2])
    return f": did you mean {' or '.join(close)}?" if close else ""


def _check_value(name: str, value: Any, source: _SpecText, section: str | None, root: Path):
    """Validate one value of a known name; returns it (preset paths made absolute)."""
    line = source.line_of(name, section)
    if name == "overrides":
        raise source.error(
            line,
            "'overrides' is not set directly",
            "write the elastix parameters themselves, e.g. "
            "MaximumNumberOfIterations = [100, 100, 100]",
        )
    if name in regtrack_options():
        return _check_option(name, value, source, line, root)
    if not _is_elastix_name(name):
        raise source.error(
            line,
            f"unknown parameter {name!r}: neither an elastix parameter nor a regtrack option "
            f"({', '.join(regtrack_options())})",
            f"correct the name{_suggest(name)} (names are case-sensitive)",
        )
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, (bool, int, float, str)) for v in items):
        raise source.error(
            line,
            f"elastix parameter {name} = {value!r} is not a number, word, true/false or "
            "a flat list of them",
            'write e.g. 16, "AdvancedMattesMutualInformation" or [100, 100, 100] (in [axes], '
            "a list of such values)",
        )
    from regtrack.parameters import check_parameter_values

    try:
        check_parameter_values({name: value})
    except ValueError as error:
        raise source.error(
            line, str(error).split("; correct it")[0], f"correct the value of {name}"
        ) from None
    return value


def _check_option(name: str, value: Any, source: _SpecText, line, root: Path):
    """Validate a TrackerSettings field's value by the field's type, then by the dataclass."""
    if name == "preset":
        return _check_preset(value, source, line, root)
    kinds = _option_types()[name]
    optional = type(None) in kinds
    if optional and _is_none_word(name, value):
        return value.lower()
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if bool in kinds:
        ok, example = isinstance(value, bool), "true or false"
    elif float in kinds:
        ok, example = number and value >= 0, "a number >= 0, e.g. 10"
    elif int in kinds:
        ok, example = number and value >= 0 and isinstance(value, int), "a whole number, e.g. 512"
    elif str in kinds:
        ok, example = isinstance(value, str), 'a word in quotes, e.g. "registration"'
        if ok and (root / value).is_file():  # a file beside the spec (a checkpoint)
            value = str(root / value)
    else:
        ok, example = True, ""
    # An optional switch is "auto" when unset (roi); an optional number is "none".
    words = (' or "auto"' if bool in kinds else ' or "none"') if optional else ""
    if not ok:
        raise source.error(
            line, f"{name} = {value!r} is not {example}{words}", f"write {name} = {example}{words}"
        )
    _check_with_dataclass(name, value, source, line)
    return value


def _option_types() -> dict[str, tuple]:
    """TrackerSettings field name -> the types its annotation allows (``float | None``:
    ``(float, NoneType)``), read from the dataclass's real types, not their text."""
    from regtrack.tracking import TrackerSettings

    hints = typing.get_type_hints(TrackerSettings)
    return {
        f.name: typing.get_args(hints[f.name]) or (hints[f.name],)
        for f in dataclasses.fields(TrackerSettings)
    }


def _check_with_dataclass(name: str, value: Any, source: _SpecText, line) -> None:
    """TrackerSettings' own checks (a method name, a budget > 0) at the spec's line."""
    from regtrack.tracking import TrackerSettings

    try:
        TrackerSettings(**{name: value})
    except (ValueError, TypeError) as error:
        raise source.error(line, str(error), f"change the value of {name}") from None


def _check_preset(value: Any, source: _SpecText, line, root: Path):
    """A preset name, or parameter file path(s) made absolute against the spec's folder."""
    from regtrack.parameters import check_preset_values

    paths = value if isinstance(value, list) else [value]
    if not paths or not all(isinstance(v, str) for v in paths):
        raise source.error(
            line,
            f"preset = {value!r} is not a name or a list of files",
            'write e.g. preset = "bspline_ncc"',
        )
    resolved = [str(root / v) if _looks_like_file(v) else v for v in paths]
    try:
        check_preset_values(resolved if isinstance(value, list) else resolved[0])
    except ValueError as error:
        raise source.error(
            line,
            str(error).rstrip("."),
            "use a preset name listed by `regtrack presets` or an existing parameter file",
        ) from None
    return resolved if isinstance(value, list) else resolved[0]


def _looks_like_file(value: str) -> bool:
    return value.endswith(".txt") or "/" in value


def _read_cases(data: dict, source: _SpecText, root: Path) -> dict[str, Path]:
    """Case name -> folder for every entry of ``cases`` (globs expanded, sorted by name)."""
    line = source.line_of("cases")
    entries = data.get("cases")
    if isinstance(entries, str):
        entries = [entries]
    if not entries or not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise source.error(
            line,
            "cases must be a non-empty list of case folders or globs",
            'write e.g. cases = ["data/*/"] (relative to the spec file\'s folder)',
        )
    found: dict[str, Path] = {}
    for entry in entries:
        for folder in _case_folders(entry, source, line, root):
            other = found.setdefault(folder.name, folder)
            if other != folder:
                raise source.error(
                    source.line_of_text(entry, line),
                    f"two case folders are both named {folder.name!r} ({other} and {folder})",
                    "give each case folder its own name; runs are stored by case name",
                )
    return dict(sorted(found.items()))


def _case_folders(entry: str, source: _SpecText, line, root: Path) -> list[Path]:
    pattern = Path(entry).expanduser()
    pattern = pattern if pattern.is_absolute() else root / pattern
    here = source.line_of_text(entry, line)
    if not _GLOB_CHARS.search(entry):
        if not pattern.is_dir():
            raise source.error(
                here,
                f"case folder {entry!r} does not exist (looked for {pattern})",
                "correct the path (relative paths start at the spec file's folder) or remove "
                "the entry",
            )
        if not _is_case_folder(pattern):
            raise source.error(
                here,
                f"{entry!r} is not a TrackRAD case folder (no images/ in {pattern})",
                "point at the case folder itself (the one holding images/ and targets/)",
            )
        return [pattern.resolve()]
    matches = sorted(Path(p).resolve() for p in glob.glob(str(pattern)))
    folders = [p for p in matches if _is_case_folder(p)]
    if not folders:
        raise source.error(
            here,
            f"cases glob {entry!r} matches no case folder ({len(matches)} path(s) match "
            f"{pattern}, none holding images/)",
            'correct the glob (relative to the spec file\'s folder), e.g. "data/*/"',
        )
    return folders


def _is_case_folder(path: Path) -> bool:
    """A TrackRAD case folder or a challenge input folder (both hold images/)."""
    return path.is_dir() and (path / "images").is_dir()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)
