from crmkit.cli import main
from trellis_gateway.app import DEFINITION
from trellis_gateway.config import GatewaySettings

main(DEFINITION, GatewaySettings)
