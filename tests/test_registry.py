import pytest

from robench.errors import UserError
from robench.registry import Registry, describe


def test_register_lookup_and_listing():
    reg: Registry = Registry("widget")

    @reg.register("b")
    class B:
        """Second widget.

        More text."""

    @reg.register("a")
    class A:
        """First widget."""

    assert reg.get("a") is A and reg.get("b") is B
    assert reg.names() == ["a", "b"]
    assert describe(B) == "Second widget."
    assert "a" in reg and "c" not in reg


def test_duplicate_name_raises():
    reg: Registry = Registry("widget")
    reg.add("x", int)
    reg.add("x", int)  # the same object again is harmless
    with pytest.raises(ValueError, match="already registered"):
        reg.add("x", float)


def test_unknown_name_lists_known_and_suggests():
    reg: Registry = Registry("attack")
    reg.add("fgsm", object())
    reg.add("pgd", object())
    with pytest.raises(UserError) as info:
        reg.get("fsgm")
    message = str(info.value)
    assert "did you mean 'fgsm'" in message
    assert "known: fgsm, pgd" in message


def test_builtin_registries_hold_the_plugins():
    from robench.plugins import all_registries

    names = {kind: reg.names() for kind, reg in all_registries()}
    assert {"mnist", "fashion_mnist"} <= set(names["datasets"])
    assert "lenet5" in names["models"]
    assert {"fgsm", "pgd"} <= set(names["attacks"])
    assert "none" in names["defenses"]


def test_entry_point_plugins_are_loaded(monkeypatch):
    import robench.registry as registry_module

    class FakeEntryPoint:
        name = "third_party"

        def load(self):
            return "the plugin object"

    def fake_entry_points(group):
        return [FakeEntryPoint()] if group == "robench.test_plugins" else []

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    reg: Registry = Registry("thing", entry_point_group="robench.test_plugins")
    assert reg.get("third_party") == "the plugin object"


def test_registered_classes_must_derive_from_the_base():
    from robench.attacks import ATTACKS, Attack

    class NotAnAttack:
        pass

    reg: Registry = Registry("attack", base=Attack)
    with pytest.raises(TypeError, match="must be a subclass of robench.attacks.base.Attack"):
        reg.add("bad", NotAnAttack)
    with pytest.raises(TypeError, match="must be a subclass"):
        reg.add("fn", lambda: None)
    assert ATTACKS.base is Attack


def test_a_broken_entry_point_is_reported_and_the_rest_keeps_working(monkeypatch):
    import robench.registry as registry_module

    class EntryPoint:
        def __init__(self, name, value, load):
            self.name, self.value, self._load = name, value, load

        def load(self):
            return self._load()

    def failing():
        raise ImportError("No module named 'missing_dep'")

    eps = [EntryPoint("broken", "pkg.mod:Broken", failing),
           EntryPoint("not_a_class", "pkg.mod:thing", lambda: "a string"),
           EntryPoint("builtin", "pkg.mod:Other", lambda: float),
           EntryPoint("good", "pkg.mod:Good", lambda: int)]
    monkeypatch.setattr(registry_module, "entry_points",
                        lambda group: eps if group == "robench.test_broken" else [])
    reg: Registry = Registry("thing", entry_point_group="robench.test_broken", base=int)
    reg.add("builtin", bool)
    assert reg.names() == ["builtin", "good"]            # the rest keeps working
    assert reg.get("good") is int and reg.get("builtin") is bool
    assert "failed to load (ImportError: No module named 'missing_dep')" in reg.broken["broken"]
    assert "must be a subclass" in reg.broken["not_a_class"]
    assert "re-registers the existing thing 'builtin'" in reg.broken["builtin"]
    with pytest.raises(UserError, match="'broken' is installed but unusable"):
        reg.get("broken")
