"""`python -m trellis_support serve|migrate`."""

from crmkit.cli import main
from trellis_support.app import DEFINITION
from trellis_support.config import SupportSettings

if __name__ == "__main__":
    main(DEFINITION, SupportSettings)
