"""`python -m trellis_contacts serve|migrate`."""

from crmkit.cli import main
from trellis_contacts.app import DEFINITION
from trellis_contacts.config import ContactsSettings

if __name__ == "__main__":
    main(DEFINITION, ContactsSettings)
