"""The console's review story in a real browser (headless Chromium through ChromeDriver).

Run by tests/tests/browser.rs, which builds the world and checks the outcome through the API.
Its one argument is a JSON object: the server's URL, the tokens of a reviewer, a second
reviewer, an admin and a scientist of another org, the exports to return, approve and tamper
with, the scenario to approve, and where to keep the screenshot of the review page.
Exits non-zero with the reason when a step does not do what a person would expect.
"""

import json
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
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
    if not condition:
        raise SystemExit(f"{what}\n--- page {driver.current_url} ---\n{driver.page_source[:3000]}")


def sign_in(driver, token):
    driver.delete_all_cookies()
    driver.get(url + "/")
    expect(driver.current_url.endswith("/console/sign-in"), "the console asks to sign in", driver)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    expect("Signed in as" in driver.page_source, "signing in opens the console", driver)


def open_export_from_queue(driver, export):
    driver.find_element(By.LINK_TEXT, "Review queue").click()
    links = driver.find_elements(By.LINK_TEXT, export)
    expect(links, f"export {export} is in the review queue", driver)
    links[0].click()
    expect("Gate report" in driver.page_source, "the review page shows the gate report", driver)
    for check in ["threshold", "dominance", "differencing", "inference", "identifiers"]:
        expect(check in driver.page_source, f"the review page shows the {check} check", driver)


def decide(driver, decision, comment):
    driver.find_element(By.ID, "comment").send_keys(comment)
    driver.find_element(By.CSS_SELECTOR, f"button[value={decision}]").click()


with tempfile.TemporaryDirectory() as profile:
    driver = browser(profile)
    try:
        # A reviewer finds the export in the queue, reads its checks, and returns it.
        sign_in(driver, story["reviewer"])
        open_export_from_queue(driver, story["returned"])
        driver.save_screenshot(story["screenshot"])
        decide(driver, "return", "Please explain why the age column is needed")
        expect(": returned" in driver.page_source, "the export is returned", driver)
        expect("Please explain why the age column is needed" in driver.page_source,
               "the comment is in the export's history", driver)

        # A second reviewer approves another.
        sign_in(driver, story["second_reviewer"])
        open_export_from_queue(driver, story["approved"])
        decide(driver, "approve", "Checked every cell; fine to release")
        expect(": approved" in driver.page_source, "the export is approved", driver)

        # A form whose CSRF token was changed in the page is refused, and changes nothing.
        open_export_from_queue(driver, story["tampered"])
        driver.execute_script(
            "document.querySelector('form[action$=\"/review\"] input[name=csrf]').value"
            " = 'tg_forged'")
        decide(driver, "approve", "forged")
        expect("CSRF" in driver.page_source, "a form without the session's token is refused", driver)

        # An admin approves a scenario from its page.
        sign_in(driver, story["admin"])
        driver.find_element(By.LINK_TEXT, "Scenarios").click()
        links = driver.find_elements(By.LINK_TEXT, story["scenario"])
        expect(links, "the pending scenario is listed", driver)
        links[0].click()
        driver.find_element(By.XPATH, "//button[contains(., 'Approve this scenario')]").click()
        expect("admin" in driver.find_element(By.TAG_NAME, "body").text,
               "the admin's approval is shown", driver)

        # A scientist of another org is told the export does not exist.
        sign_in(driver, story["outsider"])
        driver.get(f"{url}/console/exports/{story['returned']}")
        expect("Gate report" not in driver.page_source, "another org's export is not shown", driver)
        expect("not found" in driver.page_source.lower(), "another org's export is not found", driver)

        # Signing out ends the session.
        driver.find_element(By.LINK_TEXT, "Back to the console").click()
        driver.find_element(By.XPATH, "//button[starts-with(., 'Sign out')]").click()
        driver.get(url + "/console")
        expect(driver.current_url.endswith("/console/sign-in"), "signed out", driver)
    finally:
        driver.quit()
print("the review story ran in Chromium")
