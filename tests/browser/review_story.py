"""The console's review story in a real browser (headless Chromium through ChromeDriver).

Run by tests/tests/it/browser.rs, which builds the world and checks the outcome through the API.
Its one argument is a JSON object: the server's URL, the tokens of a reviewer, a second
reviewer, an admin and a scientist of another org, the exports to return, approve and tamper
with, the scenario to approve, and where to keep the screenshot of the review page.
Exits non-zero with the reason when a step does not do what a person would expect.
"""

import json
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

story = json.loads(sys.argv[1])
url = story["url"]


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def expect(condition, what, driver):
    """Waits up to 10 s for `condition` (a function of nothing) to hold: a click returns
    before the page it leads to has loaded."""
    deadline = time.monotonic() + 10
    while True:
        try:
            if condition():
                return
        except WebDriverException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{what}\n--- page {driver.current_url} ---\n{driver.page_source[:3000]}")
        time.sleep(0.1)


def sign_in(driver, token):
    driver.delete_all_cookies()
    driver.get(url + "/")
    expect(lambda: driver.current_url.endswith("/console/sign-in"), "the console asks to sign in", driver)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    expect(lambda: "Signed in as" in driver.page_source, "signing in opens the console", driver)


def open_export_from_queue(driver, export):
    driver.find_element(By.LINK_TEXT, "Review queue").click()
    expect(lambda: driver.find_elements(By.LINK_TEXT, export),
           f"export {export} is in the review queue", driver)
    driver.find_element(By.LINK_TEXT, export).click()
    expect(lambda: "Gate report" in driver.page_source, "the review page shows the gate report", driver)
    for check in ["threshold", "dominance", "differencing", "inference", "identifiers"]:
        expect(lambda: check in driver.page_source, f"the review page shows the {check} check", driver)


def decide(driver, decision, comment):
    driver.find_element(By.ID, "comment").send_keys(comment)
    driver.find_element(By.CSS_SELECTOR, f"button[value={decision}]").click()


def return_export(driver):
    """A reviewer finds the export in the queue, reads its checks, and returns it."""
    sign_in(driver, story["reviewer"])
    open_export_from_queue(driver, story["returned"])
    driver.save_screenshot(story["screenshot"])
    decide(driver, "return", "Please explain why the age column is needed")
    expect(lambda: ": returned" in driver.page_source, "the export is returned", driver)
    expect(lambda: "Please explain why the age column is needed" in driver.page_source,
           "the comment is in the export's history", driver)


def approve_amended(driver):
    """A second reviewer finds the amended request, sees what it answers, and approves it."""
    sign_in(driver, story["second_reviewer"])
    open_export_from_queue(driver, story["amended"])
    expect(lambda: f"Amends export {story['returned']}" in driver.find_element(By.TAG_NAME, "body").text,
           "the amended request names the returned one", driver)
    driver.find_element(By.LINK_TEXT, story["returned"]).click()
    expect(lambda: "Please explain why the age column is needed" in driver.page_source,
           "the returned request's comment is one click away", driver)
    driver.back()
    decide(driver, "approve", "The age column is explained; every cell checked")
    expect(lambda: ": approved" in driver.page_source, "the export is approved", driver)
    # A form whose CSRF token was changed in the page is refused, and changes nothing.
    open_export_from_queue(driver, story["tampered"])
    driver.execute_script(
        "document.querySelector('form[action$=\"/review\"] input[name=csrf]').value"
        " = 'tg_forged'")
    decide(driver, "approve", "forged")
    expect(lambda: "CSRF" in driver.page_source, "a form without the session's token is refused", driver)


def approve_scenario(driver):
    """An admin approves a scenario from its page."""
    sign_in(driver, story["admin"])
    driver.find_element(By.LINK_TEXT, "Scenarios").click()
    expect(lambda: driver.find_elements(By.LINK_TEXT, story["scenario"]),
           "the pending scenario is listed", driver)
    driver.find_element(By.LINK_TEXT, story["scenario"]).click()
    expect(lambda: driver.find_elements(By.XPATH, "//button[contains(., 'Approve this scenario')]"),
           "the scenario's page offers its approval", driver)
    driver.find_element(By.XPATH, "//button[contains(., 'Approve this scenario')]").click()
    expect(lambda: "admin" in driver.find_element(By.TAG_NAME, "body").text,
           "the admin's approval is shown", driver)


def outsider(driver):
    """A scientist of another org is told the export does not exist; signing out ends it."""
    sign_in(driver, story["outsider"])
    driver.get(f"{url}/console/exports/{story['returned']}")
    expect(lambda: "Gate report" not in driver.page_source, "another org's export is not shown", driver)
    expect(lambda: "not found" in driver.page_source.lower(), "another org's export is not found", driver)
    driver.find_element(By.LINK_TEXT, "Back to the console").click()
    # Each click waits for the page it leads to: a button found on the page being left is
    # clicked there, and the click is lost with it.
    expect(lambda: driver.current_url.endswith("/console"), "back at the console", driver)
    driver.find_element(By.XPATH, "//button[starts-with(., 'Sign out')]").click()
    expect(lambda: driver.current_url.endswith("/console/sign-in"), "signed out", driver)
    driver.get(url + "/console")
    expect(lambda: driver.current_url.endswith("/console/sign-in"), "still signed out", driver)


STEPS = {
    "return": return_export,
    "approve_amended": approve_amended,
    "approve_scenario": approve_scenario,
    "outsider": outsider,
}

with tempfile.TemporaryDirectory() as profile:
    driver = browser(profile)
    try:
        for step in story["steps"]:
            STEPS[step](driver)
    finally:
        driver.quit()
print("the steps ran in Chromium:", ", ".join(story["steps"]))
