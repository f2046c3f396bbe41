"""The Trellis service chassis: what every service shares, so the services hold only their domain."""
