"""`python -m trellis_sales serve|migrate`."""

from crmkit.cli import main
from trellis_sales.app import DEFINITION
from trellis_sales.config import SalesSettings

if __name__ == "__main__":
    main(DEFINITION, SalesSettings)
