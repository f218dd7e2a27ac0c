import pytest

from regtrack.parameters import (
    DEFAULT_PRESET,
    available_presets,
    load_parameter_maps,
    parameter_overrides_from_strings,
    preset_files,
    to_elastix_values,
)


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
