"""What an audit reads: manifest trees, a spec, the PKI state, certificates and key files."""
