import pytest

from regtrack.parameters import (
    DEFAULT_PRESET,
    available_presets,
    load_parameter_maps,
    parameter_overrides_from_strings,
    preset_files,
    read_parameter_file,
    to_elastix_values,
)
from regtrack.tracking import TrackerSettings


def test_native_values_become_elastix_strings():
    assert to_elastix_values(True) == ("true",)
    assert to_elastix_values(False) == ("false",)
    assert to_elastix_values(3) == ("3",)
    assert to_elastix_values(16.0) == ("16",)
    assert to_elastix_values(0.5) == ("0.5",)
    assert to_elastix_values([100, 50]) == ("100", "50")
    assert to_elastix_values("AdvancedNormalizedCorrelation") == ("AdvancedNormalizedCorrelation",)


def test_default_preset_is_shipped_and_readable():
    assert DEFAULT_PRESET in available_presets()
    parameter_object = load_parameter_maps(DEFAULT_PRESET)
    parameter_map = parameter_object.GetParameterMap(0)
    assert parameter_map["Transform"] == ("BSplineTransform",)
    levels = int(parameter_map["NumberOfResolutions"][0])
    assert len(parameter_map["MaximumNumberOfIterations"]) == levels


def test_overrides_apply_to_every_stage(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    text = preset_files(DEFAULT_PRESET)[0].read_text()
    first.write_text(text)
    second.write_text(text)
    parameter_object = load_parameter_maps(
        [first, second], {"MaximumNumberOfIterations": [5, 6, 7], "WriteResultImage": False}
    )
    for index in range(2):
        parameter_map = parameter_object.GetParameterMap(index)
        assert parameter_map["MaximumNumberOfIterations"] == ("5", "6", "7")
        assert parameter_map["WriteResultImage"] == ("false",)


def test_parameter_files_read_as_itk_reads_them(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(
        '// a comment (Metric "NotThis")\n'
        '(Metric "AdvancedNormalizedCorrelation")  // trailing\n'
        "(MaximumNumberOfIterations 30 20 10)\n"
        '(ResultImageFormat "mha")\n'
        "(FinalGridSpacingInPhysicalUnits 16.5)\n"
    )
    assert read_parameter_file(path) == {
        "Metric": ("AdvancedNormalizedCorrelation",),
        "MaximumNumberOfIterations": ("30", "20", "10"),
        "ResultImageFormat": ("mha",),
        "FinalGridSpacingInPhysicalUnits": ("16.5",),
    }
    shipped = preset_files(DEFAULT_PRESET)[0]
    parameter_map = load_parameter_maps(shipped).GetParameterMap(0)
    assert read_parameter_file(shipped) == {k: tuple(v) for k, v in dict(parameter_map).items()}


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("(MaximumNumberOfIterations 30 10.7 30)", ["MaximumNumberOfIterations", "whole"]),
        ("(FinalGridSpacingInPhysicalUnits -5)", ["FinalGridSpacingInPhysicalUnits", "> 0"]),
        ('(WriteResultImage "maybe")', ["WriteResultImage", "true or false"]),
    ],
)
def test_a_bad_value_in_a_parameter_file_is_named_with_the_file(tmp_path, line, words):
    name = line[1:].split()[0]
    lines = preset_files(DEFAULT_PRESET)[0].read_text().splitlines()
    path = tmp_path / "mine.txt"
    path.write_text("\n".join(line if f"({name} " in ln else ln for ln in lines))
    for build in (lambda: TrackerSettings(preset=str(path)), lambda: load_parameter_maps(path)):
        with pytest.raises(ValueError, match="mine.txt") as error:
            build()
        assert all(word in str(error.value) for word in words)
    # An override that replaces the bad value makes the file usable.
    good = {
        "MaximumNumberOfIterations": [5, 5, 5],
        "FinalGridSpacingInPhysicalUnits": 16,
        "WriteResultImage": False,
    }
    TrackerSettings(preset=str(path), overrides={name: good[name]})
    assert load_parameter_maps(path, {name: good[name]}).GetParameterMap(0)[name]


def test_a_parameter_given_twice_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "twice.txt"
    path.write_text("(MaximumNumberOfIterations 30)\n// note\n(MaximumNumberOfIterations 10)\n")
    with pytest.raises(ValueError, match=r"twice.txt.*MaximumNumberOfIterations.*line 3"):
        read_parameter_file(path)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match=r"does not exist.*bspline_ncc"):
        preset_files("no_such_preset")


def test_missing_parameter_file_is_named():
    with pytest.raises(ValueError, match="missing.txt"):
        preset_files("missing.txt")


def test_misspelt_parameter_suggests_the_right_one():
    with pytest.raises(ValueError, match="Did you mean 'MaximumNumberOfIterations'"):
        load_parameter_maps(DEFAULT_PRESET, {"MaximumNumberOfIteration": 10})


def test_indexed_and_impact_parameters_are_known():
    load_parameter_maps(DEFAULT_PRESET, {"Metric0Weight": 1.0, "ImpactDimension0": 2})


def test_cli_override_strings():
    assert parameter_overrides_from_strings(["MaximumNumberOfIterations=10,20 30"]) == {
        "MaximumNumberOfIterations": ["10", "20", "30"]
    }
    with pytest.raises(ValueError, match="Name=value"):
        parameter_overrides_from_strings(["MaximumNumberOfIterations"])
