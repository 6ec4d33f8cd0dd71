"""The built-in message texts of contract §7, in zh-CN and en: (message type, locale) → (subject,
body). Each is adapted per channel (greeting for email, brand prefix for sms) in templates.py.

Context: `event` (the event's data), `member` (name, tier, card_no; name may be None),
`timezone`; filters `money`, `localdate`, `localtime`."""

# ruff: noqa: RUF001  (Chinese text uses full-width punctuation)
from __future__ import annotations

_ZH_COUPON = (
    "{% if event.kind == 'amount_off' %}{{ event.value | money(event.currency) }} 优惠券"
    "{% elif event.kind == 'percent_off' %}{{ event.value }}% 折扣券"
    "{% elif event.kind == 'free_shipping' %}包邮券{% else %}礼品券{% endif %}"
)
_EN_COUPON = (
    "{% if event.kind == 'amount_off' %}{{ event.value | money(event.currency) }} off coupon"
    "{% elif event.kind == 'percent_off' %}{{ event.value }}% off coupon"
    "{% elif event.kind == 'free_shipping' %}free shipping coupon{% else %}gift coupon{% endif %}"
)

TEXTS: dict[tuple[str, str], tuple[str, str]] = {
    ("member.registered", "zh-CN"): (
        "欢迎加入会员",
        "{{ member.name or '亲爱的会员' }}，欢迎加入！您的会员卡号 {{ event.card_no }}，"
        "邀请好友时请使用推荐码 {{ event.referral_code }}。",
    ),
    ("member.registered", "en"): (
        "Welcome to the club",
        "Welcome aboard, {{ member.name or 'new member' }}! Your card number is "
        "{{ event.card_no }}; friends who join with your code {{ event.referral_code }} "
        "earn you a bonus.",
    ),
    ("points.credited", "zh-CN"): (
        "积分到账",
        "您获得 {{ event.points }} 积分{% if event.status == 'pending' %}"
        "（{{ event.available_at | localdate }} 起可用）{% endif %}"
        "，当前可用积分 {{ event.available_after }}。",
    ),
    ("points.credited", "en"): (
        "Points credited",
        "You earned {{ event.points }} points"
        "{% if event.status == 'pending' %} (usable from {{ event.available_at | localdate }})"
        "{% endif %}. Available now: {{ event.available_after }}.",
    ),
    ("points.expiring_soon", "zh-CN"): (
        "积分即将过期",
        "您有 {{ event.points }} 积分将于 {{ event.expires_at | localdate }} 起过期，请尽快使用。",
    ),
    ("points.expiring_soon", "en"): (
        "Points expiring soon",
        "{{ event.points }} of your points start to expire on "
        "{{ event.expires_at | localdate }}. Use them before they go.",
    ),
    ("coupon.issued", "zh-CN"): (
        "您有一张新优惠券",
        "您获得一张" + _ZH_COUPON + "{% if event.min_spend_minor %}"
        "（满 {{ event.min_spend_minor | money(event.currency) }} 可用）{% endif %}，"
        "券码 {{ event.coupon_code }}，有效期至 {{ event.valid_until | localdate }}。",
    ),
    ("coupon.issued", "en"): (
        "A new coupon for you",
        "You have a new " + _EN_COUPON + "{% if event.min_spend_minor %}"
        " (on orders of {{ event.min_spend_minor | money(event.currency) }} or more){% endif %}"
        ": code {{ event.coupon_code }}, valid until {{ event.valid_until | localdate }}.",
    ),
    ("coupon.expiring_soon", "zh-CN"): (
        "优惠券即将过期",
        "您的优惠券 {{ event.coupon_code }} 将于 {{ event.valid_until | localdate }} 过期，"
        "别错过。",
    ),
    ("coupon.expiring_soon", "en"): (
        "Your coupon expires soon",
        "Your coupon {{ event.coupon_code }} expires on {{ event.valid_until | localdate }}. "
        "Don't miss it.",
    ),
    ("member.tier_changed", "zh-CN"): (
        "会员等级变更",
        "{% if event.reason == 'downgrade' %}您的会员等级已调整为 {{ event.new_tier }}。"
        "{% else %}恭喜！您已升级为 {{ event.new_tier }} 会员，"
        "购物积分 {{ event.points_multiplier }} 倍。{% endif %}",
    ),
    ("member.tier_changed", "en"): (
        "Your membership tier changed",
        "{% if event.reason == 'downgrade' %}Your tier is now {{ event.new_tier }}."
        "{% else %}Congratulations! You are now a {{ event.new_tier }} member and earn "
        "{{ event.points_multiplier }}x points on purchases.{% endif %}",
    ),
    ("order.shipped", "zh-CN"): (
        "订单已发货",
        "您的订单 {{ event.external_id }} 已发货"
        "{% if event.carrier %}，{{ event.carrier }}{% endif %}"
        "{% if event.tracking_no %} 运单号 {{ event.tracking_no }}{% endif %}。",
    ),
    ("order.shipped", "en"): (
        "Your order has shipped",
        "Your order {{ event.external_id }} is on its way"
        "{% if event.carrier %} with {{ event.carrier }}{% endif %}"
        "{% if event.tracking_no %} (tracking number {{ event.tracking_no }}){% endif %}.",
    ),
    ("order.delivered", "zh-CN"): (
        "订单已送达",
        "您的订单 {{ event.external_id }} 已送达，感谢您的购买！",
    ),
    ("order.delivered", "en"): (
        "Your order was delivered",
        "Your order {{ event.external_id }} has been delivered. Thank you for shopping with us!",
    ),
    ("order.payment_reminder", "zh-CN"): (
        "订单待付款",
        "您的订单 {{ event.external_id }}（{{ event.total_minor | money(event.currency) }}）"
        "尚未付款，请尽快完成支付。",
    ),
    ("order.payment_reminder", "en"): (
        "Your order is waiting for payment",
        "Your order {{ event.external_id }} ({{ event.total_minor | money(event.currency) }}) "
        "is not paid yet. Complete your payment to have it on its way.",
    ),
    ("member.winback", "zh-CN"): (
        "好久不见",
        "{{ member.name or '亲爱的会员' }}，好久不见！我们为您准备了新品和会员专享优惠，"
        "欢迎回来看看。",
    ),
    ("member.winback", "en"): (
        "We miss you",
        "It has been a while, {{ member.name or 'friend' }}! New arrivals and member-only "
        "offers are waiting for you.",
    ),
}

# How an email opens and closes, per locale.
EMAIL_FRAME: dict[str, tuple[str, str]] = {
    "zh-CN": ("{{ member.name or '尊敬的会员' }}，您好：", "—— 会员中心"),
    "en": ("Hello {{ member.name or 'there' }},", "— The loyalty team"),
}
SMS_BRAND: dict[str, str] = {"zh-CN": "【会员中心】", "en": "[Loyalty] "}
