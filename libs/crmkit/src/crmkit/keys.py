"""`python -m crmkit.keys <kid> [scope ...]`: a new identity-token key pair for operators.

Prints the private key (PEM, for the signer's Secret) and the JWKS entry of its public half
(for INTERNAL_TOKEN_PUBLIC_KEYS). A kid is <issuer>-<version>: `gateway-2` may assert any
caller; a service's own key (`notify-1 contacts:read`) only itself, within the scopes given.
"""

from __future__ import annotations

import argparse
import json

from crmkit import auth


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m crmkit.keys")
    parser.add_argument("kid", help="key id, <issuer>-<version>, e.g. gateway-2")
    parser.add_argument("scopes", nargs="*", help="a service's own key: the scopes it may claim")
    args = parser.parse_args()
    key = auth.SigningKey.generate(args.kid)
    scopes = None if key.issuer == auth.GATEWAY else args.scopes
    print(key.pem(), end="")
    print(json.dumps(key.public_jwk(scopes)))


if __name__ == "__main__":
    main()
