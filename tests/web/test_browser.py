"""Both faces end to end in a real browser: headless Chromium (Debian's package) driven by
Selenium, against a real hub, the demo's provider adapters and ``exchange web``. Every page
visited is saved as a screenshot (the path is printed). The browser runs phone-sized, in
Chinese unless a test switches to English.

The pages carry no script and the Content-Security-Policy forbids any, so every path taken here
is the no-JavaScript path; Selenium's own scripts only measure the page (layout, focus).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import demo_data as data
from adapters.client import Refused
from exchange.cli.demo import LOAN
from exchange.cli.demo_web import CLERK, CLERK_PASSWORD
from tests.web.conftest import CHROMEDRIVER, CHROMIUM, WebStack, require_chromium

PHONE = (390, 844)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    require_chromium()
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.TemporaryDirectory(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile.name}",
        "--lang=zh-CN",
    ):
        options.add_argument(flag)
    # A phone's viewport (headless windows have a minimum width wider than a phone).
    options.add_experimental_option(
        "mobileEmulation",
        {"deviceMetrics": {"width": PHONE[0], "height": PHONE[1], "pixelRatio": 2.0}},
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        profile.cleanup()


class Page:
    """The browser with the app's address, screenshots, and checks every page must pass."""

    def __init__(self, driver: object, stack: WebStack, shots: Path) -> None:
        from selenium.webdriver.remote.webdriver import WebDriver

        assert isinstance(driver, WebDriver)
        self.driver = driver
        self.stack = stack
        self.shots = shots

    def open(self, path: str) -> None:
        self.driver.get(self.stack.url + path)

    def by_id(self, element_id: str):  # type: ignore[no-untyped-def]
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def text(self) -> str:
        """The page's main text, read in one script call. A click or Enter that sends a form
        does not wait for the next page, and an element reference held across the swap goes
        stale (or names a node of the old document): one script holds no reference."""
        from selenium.common.exceptions import WebDriverException

        for _ in range(50):
            try:
                found = self.driver.execute_script(
                    "const m = document.querySelector('main'); return m ? m.innerText : null"
                )
            except WebDriverException:
                found = None
            if found is not None:
                return str(found)
            time.sleep(0.1)
        raise AssertionError("no <main> on the page after 5 s")

    def shows(self, needle: str, seconds: float = 15.0) -> bool:
        """Whether the page shows ``needle`` within ``seconds``: the page a form led to may
        still be loading when the next line runs."""
        deadline = time.monotonic() + seconds
        while needle not in self.text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def shot(self, name: str) -> None:
        """Save a screenshot and check what every page must be: fits a phone's width, every
        input labelled, the language declared."""
        self._save_whole_page(self.shots / f"{name}.png")
        overflow = self.driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"{name}: {overflow}px wider than the phone's screen"
        unlabelled = self.driver.execute_script(
            "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
            ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))"
            ".map(e => e.name || e.id)"
        )
        assert not unlabelled, f"{name}: inputs without a label: {unlabelled}"
        assert self.driver.find_element("tag name", "html").get_attribute("lang")

    def _save_whole_page(self, path: Path) -> None:
        """A screenshot of the whole page, not only the phone's first screen."""
        import base64

        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        metrics = {"width": PHONE[0], "deviceScaleFactor": 2, "mobile": True}
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {**metrics, "height": max(height, PHONE[1])}
        )
        try:
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
            path.write_bytes(base64.b64decode(shot["data"]))
        finally:
            self.driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride", {**metrics, "height": PHONE[1]}
            )

    def submit(self, element_id: str) -> None:
        """Click a button or link and wait until the next page replaced this one."""
        from selenium.webdriver.support.ui import WebDriverWait

        element = self.by_id(element_id)
        element.click()
        WebDriverWait(self.driver, 60).until(lambda _: _gone(element))
        WebDriverWait(self.driver, 60).until(
            lambda driver: driver.execute_script("return document.readyState") == "complete"
        )


def _gone(element: object) -> bool:
    """Whether ``element`` left the document: Chromium says so either as a stale reference or,
    when the page is swapped while it looks, as a node that "does not belong to the document"."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()  # type: ignore[attr-defined]
    except StaleElementReferenceException:
        return True
    except WebDriverException as error:
        if "does not belong to the document" in str(error):
            return True
        raise
    return False


@pytest.fixture
def page(browser: object, stack: WebStack, screenshots: Path) -> Iterator[Page]:
    shown = Page(browser, stack, screenshots)
    shown.driver.delete_all_cookies()
    yield shown


def sign_in_by_keyboard(page: Page) -> None:
    """The clerk signs in with the keyboard alone: the skip link comes first, the account
    field has focus, Tab moves to the password, Enter sends the form."""
    from selenium.webdriver.common.keys import Keys

    page.open("/counter")
    page.shot("01-counter-staff-sign-in")
    assert page.driver.switch_to.active_element.get_attribute("id") == "account"
    page.driver.switch_to.active_element.send_keys(CLERK + Keys.TAB)
    assert page.driver.switch_to.active_element.get_attribute("id") == "password"
    page.driver.switch_to.active_element.send_keys(CLERK_PASSWORD + Keys.ENTER)
    assert page.shows("选择表单")


def authenticate(page: Page, subject_id: str) -> None:
    page.by_id("subject_id").send_keys(subject_id)
    page.submit("person-authenticate")


def test_counter_prefills_asks_only_the_missing_and_submits_once(page: Page) -> None:
    sign_in_by_keyboard(page)
    page.shot("02-counter-forms")
    page.submit(f"choose-{data.FORM_ID}")
    assert page.shows("办事人身份认证")
    page.shot("03-counter-person-authenticates")
    authenticate(page, data.WANG_WU)

    # Every field on file is filled, with holder, source class and version; the missing asked.
    assert page.by_id("f_applicant_name").get_attribute("value") == "王五 (demo)"
    assert page.by_id("f_enterprise_name").get_attribute("value") == "王五示例农家乐 (demo)"
    name = page.by_id("field-applicant_name").text
    assert "已有记录，不再询问" in name and "权威来源" in name
    assert "公安局" in name and "第 1 版" in name
    marital = page.by_id("field-marital_status").text
    assert "请填写" in marital
    assert page.by_id("f_applicant_name").get_attribute("readonly") is not None
    page.shot("04-counter-prefilled-form")

    page.by_id("f_marital_status").send_keys("unmarried")
    page.submit("to-preview")
    assert page.shows("请办事人核对") and "unmarried" in page.text()
    page.shot("05-counter-preview")
    page.submit("confirm")
    done = page.text()
    assert "已送" in done and "民政局" in done and "第 1 版" in done
    assert "办事人的确认已记入账本" in done
    page.shot("06-counter-submitted-once")
    # Reloading the result does not submit again (the confirmation was a POST, then a 303).
    page.driver.refresh()
    assert page.text().count("已送") == 1

    # A second collection: the value given just now is on file, person-provided, not asked.
    page.submit("next-person")
    authenticate(page, data.WANG_WU)
    marital = page.by_id("field-marital_status").text
    assert "已有记录，不再询问" in marital and "本人提供，尚未核实" in marital
    assert page.by_id("f_marital_status").get_attribute("value") == "unmarried"
    page.shot("07-counter-second-visit-already-on-file")
    page.submit("to-preview")
    page.submit("confirm")
    assert page.shows("所有项目都已有记录，无需提交任何材料")
    page.shot("08-counter-nothing-asked-twice")


def test_my_data_history_filters_and_english(page: Page) -> None:
    page.open("/me")
    page.shot("10-mydata-sign-in")
    authenticate_me(page, data.WANG_WU)  # prefilled and collected at the counter above
    text = page.text()
    assert "使用记录" in page.driver.title
    assert "自动填表" in text and "提交材料" in text and "和平镇网上窗口" in text
    total = int(page.by_id("history-count").text.split()[1])
    assert total > 0
    page.shot("11-mydata-history")

    from selenium.webdriver.support.ui import Select

    Select(page.by_id("outcome")).select_by_value("OK")
    page.submit("apply-filter")
    assert "outcome=OK" in page.driver.current_url
    assert data.WANG_WU not in page.driver.current_url
    filtered = int(page.by_id("history-count").text.split()[1])
    outcomes = page.driver.find_elements("css selector", "table.history tbody td:last-child")
    assert filtered == len(outcomes) > 0
    assert {o.get_attribute("textContent").strip() for o in outcomes} == {"完成"}
    page.shot("12-mydata-history-filtered")

    page.submit("lang-switch")
    assert page.shows("Who used my material")
    assert page.driver.find_element("tag name", "html").get_attribute("lang") == "en"
    page.shot("13-mydata-history-english")
    page.submit("lang-switch")
    assert page.shows("使用记录")


def authenticate_me(page: Page, subject_id: str) -> None:
    page.by_id("subject_id").send_keys(subject_id)
    page.submit("me-sign-in")


def test_my_data_objection_is_filed_and_followed(page: Page) -> None:
    page.open("/me")
    authenticate_me(page, data.ZHANG_SAN)
    page.open("/me/objections")
    from selenium.webdriver.support.ui import Select

    Select(page.by_id("field")).select_by_value(f"{data.HOUSEHOLD}:address")
    page.by_id("value").send_keys("示例省示例市幸福路 2 号 (demo)")
    page.by_id("reason").send_keys("门牌号登记错了")
    page.submit("file-objection")
    filed = page.by_id("objection-filed").text
    assert "异议已提交" in filed
    objection_id = filed.split("编号")[1].strip(" 。")
    card = page.by_id(f"objection-{objection_id}").text
    assert "处理中" in card and "答复期限" in card
    page.shot("14-mydata-objection-filed")


def test_a_refusal_is_explained_with_what_to_do_next(page: Page) -> None:
    page.open("/me")
    authenticate_me(page, data.LI_SI)  # 李四 runs no business: no licence on file
    page.open("/me/objections")
    from selenium.webdriver.support.ui import Select

    Select(page.by_id("field")).select_by_value(f"{data.LICENCE}:enterprise_name")
    page.by_id("reason").send_keys("我没有开过店")
    page.submit("file-objection")
    assert "交换平台上没有这项材料的记录" in page.by_id("refusal-what").text
    assert page.by_id("refusal-next").text
    assert page.shows("NOT_ON_FILE")
    page.shot("15-mydata-refusal-explained")


def test_my_data_consent_given_used_and_revoked(page: Page, stack: WebStack) -> None:
    civil = stack.client(data.CIVIL_AFFAIRS)
    market = stack.client(data.MARKET_REGULATION)
    stack.run(
        stack.story._grant(
            data.CIVIL_AFFAIRS, data.MARKET_REGULATION, data.MARRIAGE, ["marital_status"], [LOAN]
        )
    )
    del civil
    page.open("/me")
    authenticate_me(page, data.ZHANG_SAN)
    page.open("/me/consents")
    from selenium.webdriver.support.ui import Select

    Select(page.by_id("consumer")).select_by_value(data.MARKET_REGULATION)
    Select(page.by_id("purpose")).select_by_value(LOAN)
    page.by_id(f"cf-{data.MARRIAGE}-marital_status").click()
    page.submit("give-consent")
    assert "授权已记录" in page.by_id("consent-done").text
    page.shot("16-mydata-consent-given")

    material = stack.run(market.request(data.MARRIAGE, data.ZHANG_SAN, purpose=LOAN))
    assert dict(material.fields) == {"marital_status": "married"} and material.consent_id
    page.open("/me/consents")
    card = page.by_id(f"consent-{material.consent_id}").text
    assert "有效" in card and "1 / 3" in card

    page.submit(f"revoke-{material.consent_id}")
    assert "授权已撤回" in page.by_id("consent-done").text
    assert "已撤回" in page.by_id(f"consent-{material.consent_id}").text
    page.shot("17-mydata-consent-revoked")
    with pytest.raises(Refused) as refused:
        stack.run(market.request(data.MARRIAGE, data.ZHANG_SAN, purpose=LOAN))
    assert refused.value.reason == "CONSENT_REQUIRED"

    page.open("/me/history?who=" + data.MARKET_REGULATION)
    rows = page.text()
    assert "调取材料" in rows and "被拒绝" in rows and "完成" in rows
    page.shot("18-mydata-history-requests")


def test_counter_marks_an_unavailable_holder_try_again_shortly(page: Page, stack: WebStack) -> None:
    civil = stack.story.adapters[1]  # civil affairs, holder of the marriage record
    assert civil.backend is not None
    stack.run(civil.stop(0.5))
    sign_in_by_keyboard(page)
    page.submit(f"choose-{data.FORM_ID}")
    authenticate(page, data.ZHANG_SAN)
    marital = page.by_id("field-marital_status").text
    assert "暂时无法读取" in marital and "请稍后重试" in marital
    assert not page.by_id("f_spouse_name").get_attribute("value")
    assert page.by_id("retry").is_displayed()
    page.shot("09-counter-holder-unavailable")
    page.submit("retry")
    assert "暂时无法读取" in page.by_id("field-marital_status").text
