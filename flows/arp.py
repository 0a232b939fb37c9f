"""The ARP responder flows share: a request turned into its reply by the switch itself."""

from __future__ import annotations

from flows.flow import ARP_REPLY, OFPP_IN_PORT, Action, move, output, set_field


def arp_reply(mac: str) -> tuple[Action, ...]:
    """Turn an ARP request into the reply `target is at mac` and send it back.

    The target IP is swapped through reg0, so one action list serves exact and
    range responders alike.
    """
    return (
        move("eth_src", "eth_dst"),
        set_field("eth_src", mac),
        set_field("arp_op", ARP_REPLY),
        move("arp_sha", "arp_tha"),
        set_field("arp_sha", mac),
        move("arp_tpa", "reg0"),
        move("arp_spa", "arp_tpa"),
        move("reg0", "arp_spa"),
        output(OFPP_IN_PORT),
    )
