"""The neighbour responder flows share: a request (ARP, or IPv6's neighbour solicitation)
turned into its reply by the switch itself."""

from __future__ import annotations

from flows.flow import (
    ARP_REPLY,
    ICMPV6_NA,
    OFPP_IN_PORT,
    Action,
    Table,
    move,
    output,
    resubmit,
    set_field,
)

ND_ROUTER, ND_SOLICITED, ND_OVERRIDE = 0x80000000, 0x40000000, 0x20000000  # NA flag bits
ND_OPT_TARGET_LLADDR = 2  # the NA's option: the target's link-layer address


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


def nd_reply(mac: str, router: bool) -> tuple[Action, ...]:
    """Turn a neighbour solicitation into the advertisement `target is at mac` (solicited,
    override; `router` for the gateway), then finish it in ARP (`nd_reply_tail`).

    The NA's source is the solicited target (copied from nd_target, so one action list
    serves exact and range responders alike), its destination the asker; the
    solicitation's source link-layer option becomes the target link-layer option. OVS
    lets a flow set nd_tll only where it matches an advertisement, so the MAC, parked in
    eth_src, is copied there by the tail, which the packet, now an NA, meets on a
    resubmit. The hop limit stays 255, as ND requires; OVS recomputes the checksum.
    """
    flags = ND_SOLICITED | ND_OVERRIDE | (ND_ROUTER if router else 0)
    return (
        move("eth_src", "eth_dst"),
        set_field("eth_src", mac),
        move("ipv6_src", "ipv6_dst"),
        move("nd_target", "ipv6_src"),
        set_field("icmpv6_type", ICMPV6_NA),
        set_field("nd_reserved", flags),
        set_field("nd_options_type", ND_OPT_TARGET_LLADDR),
        resubmit(Table.ARP),
    )


def nd_reply_tail() -> tuple[Action, ...]:
    """The second half of every `nd_reply`, in a flow matching the advertisement it made
    (no other advertisement reaches ARP: CLASSIFY drops them): its target link-layer
    address from eth_src, and back out of the asking port."""
    return (move("eth_src", "nd_tll"), output(OFPP_IN_PORT))
