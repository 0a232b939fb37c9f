"""Node side: OVSDB bootstrap of br-int through the python-ovs IDL, and the node agent."""
