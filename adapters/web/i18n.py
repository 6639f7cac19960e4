"""The web pages' words, in Chinese (the default) and English.

One table: message key -> (Chinese, English). Templates call ``t("key", name=value)``; a key
missing from the table is a bug the tests catch (``Catalog.text`` raises KeyError). Refusals
from the hub are explained by their contract reason (``explain``): what happened in plain words
and what to do next, never the hub's technical message alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Language(enum.Enum):
    """The languages the pages speak; ``ZH`` is the default."""

    ZH = "zh"
    EN = "en"

    @property
    def html_lang(self) -> str:
        """The value of the page's ``lang`` attribute."""
        return "zh-CN" if self is Language.ZH else "en"

    @classmethod
    def parse(cls, value: str | None) -> Language:
        """The language named by ``value`` ("zh", "en"), the default for anything else."""
        return cls.EN if value == "en" else cls.ZH


MESSAGES: dict[str, tuple[str, str]] = {
    # layout
    "app.name": ("政务数据共享 · 一表通", "Government data exchange · one form"),
    "skip": ("跳到正文", "Skip to content"),
    "lang.switch": ("English", "中文"),
    "nav.counter": ("基层窗口", "Counter"),
    "nav.mydata": ("我的数据", "My data"),
    "sign_out": ("退出", "Sign out"),
    "dev.notice": (
        "开发用身份认证：仅用于演示和测试，生产环境接入省统一身份认证平台。",
        "Development identity provider: for the demo and tests only; production uses the "
        "province's unified identity platform.",
    ),
    "required": ("必填", "required"),
    "back": ("返回", "Back"),
    # staff sign-in
    "staff.title": ("工作人员登录", "Staff sign-in"),
    "staff.username": ("工作人员账号", "Staff account"),
    "staff.password": ("密码", "Password"),
    "staff.submit": ("登录", "Sign in"),
    "staff.bad": (
        "账号或密码不正确。请再试一次，或联系本单位系统管理员。",
        "Wrong account or password. Try again, or ask your office's administrator.",
    ),
    "staff.signed_in_as": ("当前工作人员：{name}", "Signed in: {name}"),
    # forms
    "forms.title": ("选择表单", "Choose a form"),
    "forms.none": (
        "还没有登记的表单。请由本单位在交换平台登记表单后再来。",
        "No form is registered yet. Register one at the exchange first.",
    ),
    "forms.choose": ("使用此表单", "Use this form"),
    "forms.fields": ("{count} 项", "{count} fields"),
    # person authentication
    "person.title": ("办事人身份认证", "The person authenticates"),
    "person.counter_hint": (
        "请办事人本人完成身份认证。认证后才能读取其已有材料。",
        "The person authenticates themselves. Only then can their material on file be read.",
    ),
    "person.id": ("身份证号码", "ID card number"),
    "person.id_hint": ("18 位，末位可以是 X", "18 characters; the last may be X"),
    "person.assurance": ("认证方式", "How the person was identified"),
    "assurance.ID_CARD_AT_COUNTER": ("窗口核验身份证", "ID card checked at the counter"),
    "assurance.FACE_MATCH": ("人脸比对", "Face match"),
    "assurance.PASSWORD_SMS": ("密码 + 短信验证码", "Password and SMS code"),
    "person.submit": ("认证", "Authenticate"),
    "person.bad_id": (
        "身份证号码格式不正确，请核对后重新输入。",
        "That ID number is not well formed. Check it and type it again.",
    ),
    # the counter's form
    "form.title": ("{form}", "{form}"),
    "form.legend": ("表单内容", "The form"),
    "form.intro": (
        "已有记录的项目已自动填写并注明来源，不再询问；只需填写标为“请填写”的项目。",
        "Fields on file are filled in with their source and not asked again; fill in only "
        "those marked “please fill in”.",
    ),
    "form.on_file": ("已有记录，不再询问", "already on file, not asked again"),
    "form.holder": ("来源：{holder}", "Source: {holder}"),
    "form.version": ("第 {version} 版", "version {version}"),
    "form.source.authoritative": ("权威来源", "authoritative"),
    "form.source.person_provided": ("本人提供，尚未核实", "person-provided, not yet confirmed"),
    "form.missing": ("请填写：没有已有记录", "Please fill in: nothing on file"),
    "form.withheld": (
        "请填写：已有记录，但本表单无权读取",
        "Please fill in: on file, but this form may not read it",
    ),
    "form.unavailable": (
        "暂时无法读取（来源部门未及时响应），请稍后重试",
        "Unavailable: the holder did not answer. Try again shortly",
    ),
    "form.retry": ("重新读取", "Try again"),
    "form.preview": ("预览", "Preview"),
    "form.empty": ("请填写“{label}”。", "Please fill in “{label}”."),
    "form.unavailable_block": (
        "有项目暂时无法读取，请稍后点“重新读取”；不要让办事人重复提供。",
        "Some fields could not be read just now. Press “Try again” shortly rather than asking "
        "the person.",
    ),
    # preview and confirmation
    "preview.title": ("请办事人核对", "The person checks the form"),
    "preview.intro": (
        "请办事人核对以下内容。确认后，新填写的项目只提交一次，送到对应的权威部门。",
        "The person checks every value. On confirmation the newly given values are submitted "
        "once, to the department that holds them.",
    ),
    "preview.new": ("本次填写", "given now"),
    "preview.confirm": ("确认并提交", "Confirm and submit"),
    "preview.edit": ("修改", "Change"),
    "done.title": ("办理结果", "Result"),
    "done.stored": (
        "已送 {holder} 存档（第 {version} 版）",
        "Stored at {holder} (version {version})",
    ),
    "done.already": (
        "已有记录，不再询问：{holder} 已有相同材料，没有重复存档",
        "Already on file, not asked again: {holder} holds the same material; nothing stored twice",
    ),
    "done.new_version": (
        "{holder} 已更新为第 {version} 版",
        "{holder} now holds version {version}",
    ),
    "done.correction": (
        "内容与 {holder} 的记录不同，已作为更正建议送交 {holder} 处理",
        "Differs from {holder}'s record: sent to {holder} as a correction proposal",
    ),
    "done.nothing": (
        "所有项目都已有记录，无需提交任何材料。",
        "Everything was on file: nothing needed submitting.",
    ),
    "done.recorded": (
        "每一步都已记入共享账本（第 {sequence} 条）。",
        "Recorded on the ledger (entry {sequence}).",
    ),
    "done.confirmed": (
        "办事人的确认已记入账本（第 {sequence} 条）。",
        "The person's confirmation is on the ledger (entry {sequence}).",
    ),
    "done.next": ("办理下一位", "Next person"),
    "person_only": (
        "仅由本人填写，不向部门提交",
        "given by the person only; not sent to any department",
    ),
    # my data
    "me.title": ("我的数据", "My data"),
    "me.signin.title": ("登录“我的数据”", "Sign in to My data"),
    "me.signin.intro": (
        "通过身份认证登录后，您可以查看谁在什么时候、为什么使用了您的材料，对错误的材料提出异议。",
        "Sign in through the identity provider to see who used your material, when and why, "
        "and to object to a wrong value.",
    ),
    "me.history": ("使用记录", "Who used my material"),
    "me.objections": ("我的异议", "My objections"),
    "me.consents": ("我的授权", "My consents"),
    "history.when": ("时间", "When"),
    "history.who": ("谁", "Who"),
    "history.what": ("什么材料", "Which material"),
    "history.kind": ("做了什么", "What"),
    "history.why": ("为什么", "Why"),
    "history.outcome": ("结果", "Outcome"),
    "history.none": ("没有符合条件的记录。", "No access matches."),
    "history.count": ("共 {count} 条", "{count} entries"),
    "filter.legend": ("筛选", "Filter"),
    "filter.who": ("使用单位", "Who"),
    "filter.material": ("材料", "Material"),
    "filter.outcome": ("结果", "Outcome"),
    "filter.since": ("起始日期", "From date"),
    "filter.all": ("全部", "All"),
    "filter.apply": ("筛选", "Apply"),
    "filter.clear": ("清除筛选", "Clear"),
    "outcome.OK": ("完成", "done"),
    "outcome.REFUSED": ("被拒绝", "refused"),
    "outcome.FAILED": ("失败", "failed"),
    "kind.CHECK": ("查询是否已有记录", "checked whether on file"),
    "kind.SUBMIT": ("提交材料", "submitted material"),
    "kind.REQUEST": ("调取材料", "requested material"),
    "kind.PREFILL": ("自动填表", "prefilled a form"),
    "kind.ACCESS_HISTORY": ("查看使用记录", "viewed this history"),
    "kind.OBJECTION_FILING": ("提出异议", "filed an objection"),
    "kind.OBJECTION_RESOLUTION": ("处理异议", "answered an objection"),
    "kind.CALL_REFUSAL": ("被拒绝的调用", "refused call"),
    "kind.READ": ("读取", "read"),
    "kind.HOLDINGS": ("登记已有材料", "indexed material held"),
    "objection.title": ("对材料提出异议", "Object to a value"),
    "objection.intro": (
        "发现材料有误？选择项目，写明正确内容和理由。权威部门须在期限内更正或答复。",
        "Is a value wrong? Choose it, give the right value and why. The holder must correct "
        "it or answer by the deadline.",
    ),
    "objection.field": ("哪一项有误", "Which value is wrong"),
    "objection.value": ("正确内容（可不填）", "The right value (optional)"),
    "objection.reason": ("理由", "Why it is wrong"),
    "objection.submit": ("提交异议", "File the objection"),
    "objection.filed": ("异议已提交，编号 {id}。", "Objection {id} filed."),
    "objection.none": ("您还没有提出异议。", "You have not filed any objection."),
    "objection.state": ("状态", "Status"),
    "objection.deadline": ("答复期限", "Answer due by"),
    "objection.answer": ("部门答复", "The holder's answer"),
    "objection.no_reason": ("请写明理由。", "Please say why the value is wrong."),
    "state.OPEN": ("处理中，等待部门答复", "open: waiting for the holder"),
    "state.ANSWERED": ("部门已答复", "answered by the holder"),
    "state.OVERDUE": ("已超过答复期限", "past its deadline"),
    "objection.filed_on": ("提出时间", "Filed"),
    "objection.filed_by": ("经办单位", "Filed through"),
    "objection.answered_on": ("答复时间", "Answered"),
    "objection.history_note": (
        "这里列出对您材料的所有异议（包括在窗口提出的）；部门的答复内容以部门通知为准。",
        "Every objection to your material is listed (also those filed at a counter); the "
        "holder's answer itself reaches you from the holder.",
    ),
    "consent.title": ("我的授权", "My consents"),
    "consent.intro": (
        "某些事项需要您本人授权，部门才能调取您的材料。您可以随时撤回，撤回立即生效。",
        "Some purposes need your consent before a department may request your material. "
        "You can revoke a consent at any time, with effect at once.",
    ),
    "consent.none": ("您还没有给出任何授权。", "You have not given any consent."),
    "consent.consumer": ("授权给", "Given to"),
    "consent.material": ("材料", "Material"),
    "consent.fields": ("项目", "Fields"),
    "consent.purpose": ("用途", "Purpose"),
    "consent.valid_until": ("有效期至", "Valid until"),
    "consent.uses": ("已使用次数", "Used"),
    "consent.max_uses": ("最多使用次数（0 为不限）", "Uses at most (0: no limit)"),
    "consent.data_life": (
        "对方最多保存天数（0 为用完即删）",
        "Kept by them at most, days (0: not kept)",
    ),
    "consent.state": ("状态", "Status"),
    "consent.given": ("授权时间", "Given"),
    "consent.revoke": ("撤回授权", "Revoke"),
    "consent.give": ("给出授权", "Give a consent"),
    "consent.give_submit": ("确认授权", "Give consent"),
    "consent.no_purpose": (
        "目前没有需要本人授权的用途。",
        "No purpose currently needs a person's consent.",
    ),
    "consent.incomplete": (
        "请选择授权对象、用途，以及同一种材料中的项目，并填写今天以后的有效期。",
        "Choose who, the purpose, and fields of one material, and a validity after today.",
    ),
    "consent.done.given": ("授权已记录。", "Your consent is recorded."),
    "consent.done.revoked": ("授权已撤回，立即生效。", "Consent revoked, with effect at once."),
    "consent.IN_FORCE": ("有效", "in force"),
    "consent.REVOKED": ("已撤回", "revoked"),
    "consent.EXPIRED": ("已过期", "expired"),
    "consent.USED_UP": ("次数已用完", "used up"),
    # errors and refusals
    "error.title": ("无法完成", "Could not be done"),
    "error.next": ("下一步", "What to do next"),
    "error.entry": (
        "此次拒绝已记入账本（第 {sequence} 条）。",
        "This refusal is on the ledger (entry {sequence}).",
    ),
    "error.csrf": (
        "页面已过期或不是从本站提交的，请返回重新操作。",
        "The page expired or was not sent from this site. Go back and try again.",
    ),
    "error.expired": (
        "为保护个人信息，长时间未操作已自动退出，请重新登录。",
        "You were signed out after a while without activity, to protect personal data. Sign "
        "in again.",
    ),
    "error.not_found": ("没有这个页面。", "There is no such page."),
    "error.start_over": ("重新开始", "Start again"),
}

REFUSALS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    # reason -> ((what happened zh, en), (what to do next zh, en))
    "NO_GRANT": (
        ("本单位没有读取这项材料的授权。", "This office has no grant to read this material."),
        (
            "请办事人直接提供，或由本单位向材料所属部门申请授权。",
            "Ask the person for it, or ask the holder for a grant.",
        ),
    ),
    "MATERIAL_NOT_SHARED": (
        ("这项材料不予共享，只能由所属部门使用。", "This material is never shared by its holder."),
        ("请办事人到所属部门办理。", "The person deals with the holder directly."),
    ),
    "NOT_ON_FILE": (
        ("交换平台上没有这项材料的记录。", "This material is not on file."),
        ("请先在窗口采集，再提出异议。", "Collect it first; then it can be objected to."),
    ),
    "UNKNOWN_FORM": (
        ("这个表单还没有登记。", "This form is not registered."),
        ("请选择其他表单，或先登记此表单。", "Choose another form or register this one."),
    ),
    "SCHEMA_VIOLATION": (
        ("填写的内容不符合格式要求。", "A value is not in the expected form."),
        ("请检查日期（年-月-日）等格式后重新填写。", "Check dates (YYYY-MM-DD) and retry."),
    ),
    "INVALID_ARGUMENT_FIELD": (
        ("填写的内容不完整或格式不对。", "A value is incomplete or not in the expected form."),
        ("请检查后重新填写。", "Check the values and try again."),
    ),
    "RATE_LIMITED": (
        ("短时间内读取次数过多，已被暂停。", "Too many reads in a short time."),
        ("请几分钟后再试。", "Try again in a few minutes."),
    ),
    "PROVIDER_UNAVAILABLE": (
        ("材料所属部门的系统暂时无法连接。", "The holder's system cannot be reached just now."),
        ("请稍后重试，不要让办事人重复提供。", "Try again shortly rather than asking again."),
    ),
    "PROVIDER_TIMEOUT": (
        ("材料所属部门没有及时响应。", "The holder did not answer in time."),
        ("请稍后重试。", "Try again shortly."),
    ),
    "LEDGER_UNAVAILABLE": (
        (
            "交换平台暂时无法记账，为保证每次使用都有记录，暂停服务。",
            "The exchange cannot record on its ledger just now, so it serves nothing.",
        ),
        ("请稍后重试。", "Try again shortly."),
    ),
    "DEPARTMENT_INACTIVE": (
        (
            "本单位在交换平台上的账户已停用。",
            "This office's membership of the exchange is suspended.",
        ),
        ("请联系交换平台运营方。", "Contact the exchange's operator."),
    ),
    "ROLE_REQUIRED": (
        ("本单位没有办理此事项的权限。", "This office may not make this call."),
        ("请联系交换平台运营方。", "Contact the exchange's operator."),
    ),
    "VERIFICATION_FAILED": (
        (
            "收到的材料未通过签名核验，为防止错误信息，没有显示。",
            "The material received did not verify, so none of it is shown.",
        ),
        (
            "请稍后重试；如果仍然不行，请联系系统管理员。",
            "Try again shortly; if it persists, tell the administrator.",
        ),
    ),
    "ASSERTION_EXPIRED": (
        ("办事人的身份认证已过期。", "The person's authentication has run out."),
        ("请办事人重新认证后再继续。", "Have the person authenticate again, then go on."),
    ),
    "ASSERTION_REQUIRED": (
        (
            "需要办事人本人身份认证才能读取其材料。",
            "The person must authenticate before their material is read.",
        ),
        ("请办事人完成身份认证。", "Have the person authenticate."),
    ),
    "ASSERTION_AUDIENCE_MISMATCH": (
        ("身份认证不是为本窗口签发的。", "The authentication was issued for another office."),
        ("请办事人在本窗口重新认证。", "Have the person authenticate here again."),
    ),
    "UNKNOWN_IDENTITY_PROVIDER": (
        (
            "身份认证平台未在交换平台登记。",
            "The identity provider is not registered at the exchange.",
        ),
        ("请联系系统管理员。", "Contact the administrator."),
    ),
    "IDENTITY_PROVIDER_REVOKED": (
        ("身份认证平台已被停用。", "The identity provider has been suspended."),
        ("请联系系统管理员。", "Contact the administrator."),
    ),
    "CONSENT_REQUIRED": (
        (
            "这项用途需要本人授权，目前没有有效的授权。",
            "This purpose needs the person's consent, and none is in force.",
        ),
        (
            "如同意，请在“我的授权”中给出授权。",
            "If the person agrees, they give a consent under My consents.",
        ),
    ),
    "UNKNOWN_CONSENT": (
        ("没有找到这项授权。", "That consent was not found."),
        ("请刷新“我的授权”后再试。", "Reload My consents and try again."),
    ),
    "CONSENT_REVOKED": (
        ("这项授权已经撤回。", "That consent was already revoked."),
        ("不需要再操作。", "Nothing more to do."),
    ),
    "CONSENT_EXHAUSTED": (
        ("这项授权的使用次数已用完。", "That consent's uses are spent."),
        ("如仍同意，请重新给出授权。", "Give a new consent if the person still agrees."),
    ),
    "ALREADY_RESOLVED": (
        ("这项异议已经处理完毕。", "This objection has already been answered."),
        ("如仍有异议，请重新提出。", "File a new objection if needed."),
    ),
}

UNAVAILABLE_NEXT = (
    "请稍后重试。如果一直不行，请联系系统管理员。",
    "Try again shortly. If it keeps failing, contact the administrator.",
)
GENERIC = (
    ("交换平台拒绝了这次操作。", "The exchange refused this."),
    (
        "请返回重试；如果仍然不行，请把下面的编号告诉系统管理员。",
        "Go back and retry; if it keeps failing, give the administrator the number below.",
    ),
)


@dataclass(frozen=True, slots=True)
class Explanation:
    """A refusal in plain words: what happened, what to do next, and its ledger entry."""

    what: str
    next_step: str
    reason: str
    ledger_sequence: int | None


class Catalog:
    """The words of one language."""

    def __init__(self, language: Language) -> None:
        self.language = language
        self._index = 0 if language is Language.ZH else 1

    def text(self, key: str, **values: object) -> str:
        """The message ``key`` in this language with ``values`` filled in. Raises KeyError."""
        message = MESSAGES[key][self._index]
        return message.format(**values) if values else message

    def maybe(self, key: str, default: str) -> str:
        """The message ``key`` if there is one, else ``default`` (e.g. an unknown entry kind)."""
        pair = MESSAGES.get(key)
        return pair[self._index] if pair else default

    def explain(self, reason: str, unavailable: bool, ledger_sequence: int | None) -> Explanation:
        """A hub refusal in plain words, by its contract reason."""
        what, next_step = REFUSALS.get(reason, GENERIC)
        if reason not in REFUSALS and unavailable:
            what, next_step = REFUSALS["PROVIDER_UNAVAILABLE"][0], UNAVAILABLE_NEXT
        return Explanation(what[self._index], next_step[self._index], reason, ledger_sequence)
