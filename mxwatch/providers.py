"""The built-in filtering-provider profiles: their MX patterns and sender ranges.

Every pattern comes from a public page, named with its confidence in the profile's `source`
and in the comment above it; a pattern no public page gives is left out. Too broad a pattern
is the dangerous mistake: it would call a foreign MX "filtered" and enable a connector while
mail still arrives directly. So each wildcard stays inside a zone the provider runs for its
mail service, and where the provider documents exact host names, those are listed instead.
A pattern left out only holds a connector back: the operator adds the host names their
console shows with `[providers.NAME] mx = [...]`.

Sender ranges are built in only where the provider's own page lists ranges that hold for
every customer; otherwise they stay empty and the audit checks only that the connector is
IP-restricted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Literal

from .settings import Provider

# Mailprotector, the default. Hosts under inbound.emailservice.{io,cc,co} are seen in public
# MX data, and emailservice.io is Mailprotector's own domain; the bare names are matched too,
# in case an MX is the apex itself. No public file shows a full host name, so: medium
# confidence. The console shows the exact names on the domain's Overview page (MX Record
# details). The public copy of the connector article leaves the sender ranges out.
MAILPROTECTOR = Provider(
    name="mailprotector",
    mx=(
        "*.inbound.emailservice.io",
        "*.inbound.emailservice.cc",
        "*.inbound.emailservice.co",
        "inbound.emailservice.io",
        "inbound.emailservice.cc",
        "inbound.emailservice.co",
    ),
    source="built-in: public MX data (emailservice.io is Mailprotector's domain); compare "
    "with the console's Overview page, MX Record details; medium confidence",
)

# Proofpoint Essentials: regional hosts such as mx1-us1.ppe-hosted.com. Its knowledge-base
# article "[Setup Step 3]: Firewall lockdown options for Email & LDAP Discovery" names
# *.ppe-hosted.com as the Proofpoint Essentials hosts to accept mail from. The "Connection
# Details" help page (help.proofpoint.com/Proofpoint_Essentials/Email_Security/
# Administrator_Topics/000_gettingstarted/020_connectiondetails) lists each stack's MX but
# needs a sign-in. The zone serves Essentials only: high confidence. (Proofpoint's enterprise
# service, *.pphosted.com, is another product with per-customer hosts: not built in.)
PROOFPOINT_ESSENTIALS = Provider(
    name="proofpoint-essentials",
    mx=("*.ppe-hosted.com",),
    source="built-in: Proofpoint Essentials KB, '[Setup Step 3]: Firewall lockdown options "
    "for Email & LDAP Discovery' (https://excelmicro.kayako.com/en-us/article/"
    "48-setup-step-3-firewall-lockdown-options-for-email-ldap-discovery); high confidence",
)

# Mimecast: two inbound hosts per region, <region>-smtp-inbound-<n>, named in Mimecast's
# support articles ("Connect Application: Modifying Your MX Records", "Mimecast Data Centers
# and URLs"; article 34000417366675 names us-smtp-inbound-1.mimecast.com and
# za-smtp-inbound-1.mimecast.co.za). Exact names rather than *.mimecast.com, which also
# covers Mimecast's outbound, journaling and web hosts. Each host below was also seen as a
# live MX in public data: high confidence for these. Canada, the US B grid and a second South
# African host were not confirmed, so they are left out (add them from the console).
MIMECAST = Provider(
    name="mimecast",
    mx=(
        "us-smtp-inbound-1.mimecast.com",
        "us-smtp-inbound-2.mimecast.com",
        "eu-smtp-inbound-1.mimecast.com",
        "eu-smtp-inbound-2.mimecast.com",
        "de-smtp-inbound-1.mimecast.com",
        "de-smtp-inbound-2.mimecast.com",
        "au-smtp-inbound-1.mimecast.com",
        "au-smtp-inbound-2.mimecast.com",
        "za-smtp-inbound-1.mimecast.co.za",
        "je-smtp-inbound-1.mimecast-offshore.com",
        "je-smtp-inbound-2.mimecast-offshore.com",
    ),
    source="built-in: Mimecast support, 'Connect Application: Modifying Your MX Records' "
    "(https://community.mimecast.com/s/article/Connect-Application-Modifying-Your-MX-Records"
    "-673313100) and https://mimecastsupport.zendesk.com/hc/en-us/articles/34000417366675; "
    "high confidence for the hosts listed (Canada and US B grid not listed)",
)

# Barracuda Email Gateway Defense: each account gets its own hosts under
# ess.barracudanetworks.com (shown on the Domains page), all Barracuda's. Barracuda Campus,
# "Step 2 - Configure Microsoft 365 for Inbound and Outbound Mail", and its domain-status
# page name that suffix. Medium-high confidence. Regional zones (ess.de., ess.uk., ...) are
# not confirmed by a page read here, so not built in. The US range 209.222.80.0/21 is one
# region's only: a built-in list would fail the audit of every other region.
BARRACUDA = Provider(
    name="barracuda",
    mx=("*.ess.barracudanetworks.com",),
    source="built-in: Barracuda Campus, Email Gateway Defense 'Step 2 - Configure Microsoft "
    "365 for Inbound and Outbound Mail' (https://campus.barracuda.com/product/"
    "emailgatewaydefense/doc/167976430/step-2-configure-microsoft-365-for-inbound-and-"
    "outbound-mail); medium-high confidence; regional zones not listed",
)

# SpamTitan Cloud: three clusters, each with two MX names, cloud1 to cloud6.spamtitan.com,
# named in SpamTitan's article "Configure Exchange to only accept mail from SpamTitan Cloud
# servers". Exact names: *.spamtitan.com would also take TitanHQ's other hosts. Medium
# confidence: the article is old, and TitanHQ's current "Change Your MX Records" page
# (docs.titanhq.com/en/540-change-your-mx-records.html) could not be read here. The
# article's sender IPs are per cluster and dated, so none are built in.
SPAMTITAN = Provider(
    name="spamtitan",
    mx=tuple(f"cloud{n}.spamtitan.com" for n in range(1, 7)),
    source="built-in: SpamTitan support, 'Configure Exchange to only accept mail from "
    "SpamTitan Cloud servers' (http://helpstc.spamtitan.com/support/solutions/articles/"
    "4000018056); medium confidence",
)

# Sophos Email: MX hosts such as mx-01-eu-central-1.prod.hydra.sophos.com, a zone Sophos
# runs for Sophos Email (Sophos Central help, "Configure Microsoft 365", per CIPP's mail
# provider data); Sophos's own "Using TLS connections" page lists *.prod.hydra.sophos.com
# in the certificate its mail servers present. Medium confidence.
SOPHOS = Provider(
    name="sophos",
    mx=("*.prod.hydra.sophos.com",),
    source="built-in: Sophos Central help, 'Using TLS connections' (https://docs.sophos.com/"
    "central/customer/help/en-us/ManageYourProducts/EmailSecurity/SecureMessagePolicy/"
    "EmailEnforceTLSConnections/index.html); medium confidence",
)

# Trend Micro Email Security (now Cloud Email Gateway Protection in Trend Vision One): the
# help page "About mta-sts records for inbound protection" gives each serving site's MX as
# *.in.<site> and *.<site>; one wildcard per site covers both. The legacy Hosted Email
# Security names in.hes.trendmicro.com and .eu exactly ("MX record repointing (recommended
# procedure)", HES Administrator's Guide). High confidence: the vendor's own pages.
TREND_MICRO = Provider(
    name="trendmicro",
    mx=(
        "*.tmes.trendmicro.com",  # North America, Latin America, Asia Pacific
        "*.tmes.trendmicro.eu",  # Europe and Africa
        "*.tmes-anz.trendmicro.com",
        "*.tmems-jp.trendmicro.com",
        "*.tmes-sg.trendmicro.com",
        "*.tmes-in.trendmicro.com",
        "*.tmes-uae.trendmicro.com",
        "in.hes.trendmicro.com",
        "in.hes.trendmicro.eu",
    ),
    source="built-in: Trend Micro help, 'About mta-sts records for inbound protection' "
    "(docs.trendmicro.com, Trend Vision One) and HES 'MX record repointing' "
    "(https://docs.trendmicro.com/all/smb/hes/vAll/it-it/olh/ag/mx_record_repointing.html); "
    "high confidence",
)

# Hornetsecurity: mx01 to mx04.hornetsecurity.com (priorities 10 to 40), as CaptainDNS's
# "Hornetsecurity Secure Email Gateway (ex-Vade)" reports and CIPP's mail-provider data has
# from Hornetsecurity's onboarding page (www.hornetsecurity.com/en/onboarding-information/,
# not readable here): medium confidence. Other hosts (the ex-Vade fallbacks) are left out.
# The ranges are those Hornetsecurity's "Migration for Vade Cloud Customers" recommends
# allowing, worldwide.
HORNETSECURITY = Provider(
    name="hornetsecurity",
    mx=tuple(f"mx0{n}.hornetsecurity.com" for n in range(1, 5)),
    sender_ips=tuple(
        ipaddress.IPv4Network(cidr)
        for cidr in ("94.100.128.0/20", "185.140.204.0/22", "173.45.18.0/24", "83.246.65.0/24")
    ),
    source="built-in: CaptainDNS, 'Hornetsecurity Secure Email Gateway (ex-Vade)' "
    "(https://www.captaindns.com/en/blog/hornetsecurity-secure-email-gateway); ranges: "
    "https://support.hornetsecurity.com/hc/en-us/articles/45997388779537; medium confidence",
)

BUILTIN_PROVIDERS: dict[str, Provider] = {
    provider.name: provider
    for provider in (
        MAILPROTECTOR,
        PROOFPOINT_ESSENTIALS,
        MIMECAST,
        BARRACUDA,
        SPAMTITAN,
        SOPHOS,
        TREND_MICRO,
        HORNETSECURITY,
    )
}

Origin = Literal["built-in", "configured", "overrides built-in"]


def origin(provider: Provider, builtins: Mapping[str, Provider] = BUILTIN_PROVIDERS) -> Origin:
    """Where a resolved profile comes from: as built in, added by the config, or overridden.

    The config builds a new Provider for every [providers.NAME] table, with its own `source`,
    so a table that repeats the built-in values still counts as an override.
    """
    builtin = builtins.get(provider.name)
    if builtin is None:
        return "configured"
    return "built-in" if provider == builtin else "overrides built-in"
