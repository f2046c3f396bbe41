"""migrations_dir: the packaged folder of an installed wheel first, else the source checkout's."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmkit.migrations import migrations_dir


def _package(root: Path) -> Path:
    """services/svc/src/trellis_svc/app.py, as in the repository."""
    package = root / "services" / "svc" / "src" / "trellis_svc"
    package.mkdir(parents=True)
    (package / "app.py").write_text("")
    return package


def test_source_checkout_uses_the_service_folder(tmp_path: Path) -> None:
    package = _package(tmp_path)
    (tmp_path / "services" / "svc" / "migrations").mkdir()
    assert migrations_dir(str(package / "app.py")) == tmp_path / "services" / "svc" / "migrations"


def test_installed_wheel_uses_the_packaged_folder(tmp_path: Path) -> None:
    # site-packages/trellis_svc/migrations, as the wheel installs it; it wins even when a
    # `migrations` folder happens to sit two levels up as well.
    package = tmp_path / "lib" / "site-packages" / "trellis_svc"
    (package / "migrations").mkdir(parents=True)
    (tmp_path / "lib" / "migrations").mkdir()
    assert migrations_dir(str(package / "app.py")) == package / "migrations"


def test_missing_everywhere_is_an_error_naming_both_places(tmp_path: Path) -> None:
    package = _package(tmp_path)
    with pytest.raises(FileNotFoundError) as exc:
        migrations_dir(str(package / "app.py"))
    assert str(package) in str(exc.value)
    assert str(tmp_path / "services" / "svc") in str(exc.value)
