"""`python -m trellis_notify serve|migrate`."""

from crmkit.cli import main
from trellis_notify.app import DEFINITION
from trellis_notify.config import NotifySettings

if __name__ == "__main__":
    main(DEFINITION, NotifySettings)
