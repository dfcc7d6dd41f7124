// SmcAutobot — NinjaTrader 8 strategy calling the SMC /predict service on every closed bar.
//
// Implements seed 000 §4.1 exactly as smc_core/policy.py does for the backtest:
//   on bar close: build the request from the last N bars (N = RequiredBars, 49 by default),
//   POST /predict with up to 3 attempts (waits 100 ms, then 200 ms), parse the answer,
//   confidence tiers (>= FullSizeThreshold full size, >= HalfSizeThreshold half, else no entry),
//   position check (already long + long = hold, no pyramiding; short + long = close, then enter),
//   stop-loss and take-profit at ATR multiples from the entry, flat at the session close.
//
// Install: NinjaTrader 8 → Tools → Import → NinjaScript Add-On is for zips; for this single
// file copy it to Documents\NinjaTrader 8\bin\Custom\Strategies\, open the NinjaScript Editor
// and press F5 to compile. Set ServiceUrl and ApiKey in the strategy parameters, use
// Calculate = OnBarClose, and enable "Exit on session close" (the model's labels assume it).
// The service must be reachable from the NinjaTrader machine (HOST=0.0.0.0 on the server,
// behind TLS/VPN when not on localhost). Strategy Analyzer backtests call the service too.

#region Using declarations
using System;
using System.Collections.Generic;
using System.Globalization;
using System.Net.Http;
using System.Text;
using System.Threading;
using NinjaTrader.Cbi;
using NinjaTrader.NinjaScript;
using NinjaTrader.NinjaScript.Indicators;
using NinjaTrader.NinjaScript.Strategies;
#endregion

namespace NinjaTrader.NinjaScript.Strategies
{
    public class SmcAutobot : Strategy
    {
        private static readonly HttpClient Http = new HttpClient();
        private static readonly int[] RetryDelaysMs = { 100, 200 };
        private ATR atr;

        [NinjaScriptProperty] public string ServiceUrl { get; set; }
        [NinjaScriptProperty] public string ApiKey { get; set; }
        [NinjaScriptProperty] public int RequiredBars { get; set; }
        [NinjaScriptProperty] public double HalfSizeThreshold { get; set; }
        [NinjaScriptProperty] public double FullSizeThreshold { get; set; }
        [NinjaScriptProperty] public int FullSizeContracts { get; set; }
        [NinjaScriptProperty] public double StopAtr { get; set; }
        [NinjaScriptProperty] public double TargetAtr { get; set; }
        [NinjaScriptProperty] public int TimeoutMs { get; set; }

        protected override void OnStateChange()
        {
            if (State == State.SetDefaults)
            {
                Name = "SmcAutobot";
                Calculate = Calculate.OnBarClose;
                EntriesPerDirection = 1;              // no pyramiding
                EntryHandling = EntryHandling.AllEntries;
                IsExitOnSessionCloseStrategy = true;   // flat at the session close, as the labels
                ExitOnSessionCloseSeconds = 30;
                ServiceUrl = "http://127.0.0.1:8000";
                ApiKey = "";
                RequiredBars = 49;                     // GET /model → required_bars
                HalfSizeThreshold = 0.55;
                FullSizeThreshold = 0.70;
                FullSizeContracts = 2;
                StopAtr = 1.5;
                TargetAtr = 1.5;
                TimeoutMs = 500;
            }
            else if (State == State.Configure)
            {
                Http.Timeout = TimeSpan.FromMilliseconds(TimeoutMs);
            }
            else if (State == State.DataLoaded)
            {
                atr = ATR(14);
            }
        }

        protected override void OnBarUpdate()
        {
            if (CurrentBar < RequiredBars - 1)
                return;

            string answer = PostWithRetries(BuildRequest());
            if (answer == null)
                return;                                 // logged; no signal this bar

            string label = JsonString(answer, "label");
            double confidence = JsonNumber(answer, "confidence");
            if (label == null || double.IsNaN(confidence))
            {
                Print("SmcAutobot: unreadable response: " + answer);
                return;
            }
            if (label == "skip" || confidence < HalfSizeThreshold)
                return;                                 // skip keeps any open position to its orders

            int contracts = confidence >= FullSizeThreshold ? FullSizeContracts : Math.Max(1, FullSizeContracts / 2);
            double stopTicks = Math.Max(1, Math.Round(StopAtr * atr[0] / TickSize));
            double targetTicks = Math.Max(1, Math.Round(TargetAtr * atr[0] / TickSize));

            if (label == "long")
            {
                if (Position.MarketPosition == MarketPosition.Long)
                    return;                             // already long: hold
                SetStopLoss("SmcLong", CalculationMode.Ticks, stopTicks, false);
                SetProfitTarget("SmcLong", CalculationMode.Ticks, targetTicks);
                EnterLong(contracts, "SmcLong");         // closes a short first (flip)
            }
            else if (label == "short")
            {
                if (Position.MarketPosition == MarketPosition.Short)
                    return;
                SetStopLoss("SmcShort", CalculationMode.Ticks, stopTicks, false);
                SetProfitTarget("SmcShort", CalculationMode.Ticks, targetTicks);
                EnterShort(contracts, "SmcShort");
            }
        }

        private string BuildRequest()
        {
            var inv = CultureInfo.InvariantCulture;
            var bars = new StringBuilder();
            for (int ago = RequiredBars - 1; ago >= 1; ago--)
            {
                if (bars.Length > 0) bars.Append(',');
                bars.Append(BarJson(ago, inv));
            }
            return "{\"context_bars\":[" + bars + "],\"current_bar\":" + BarJson(0, inv) +
                   ",\"features\":{},\"metadata\":{\"symbol\":\"" + Instrument.MasterInstrument.Name +
                   "\",\"timeframe\":\"" + BarsPeriod.Value + (BarsPeriod.BarsPeriodType == BarsPeriodType.Minute ? "m" : "s") +
                   "\",\"session\":\"" + (Bars.IsFirstBarOfSession ? "open" : "regular") +
                   "\",\"request_time\":\"" + DateTime.UtcNow.ToString("o", inv) + "\"}}";
        }

        private string BarJson(int ago, CultureInfo inv)
        {
            // NinjaTrader stamps bars with their close time, in the exchange time zone of the data.
            DateTime closeUtc = TimeZoneInfo.ConvertTimeToUtc(Time[ago], Bars.TradingHours.TimeZoneInfo);
            return "{\"time_utc\":\"" + closeUtc.ToString("yyyy-MM-ddTHH:mm:ss", inv) + "Z\"" +
                   ",\"o\":" + Open[ago].ToString("R", inv) + ",\"h\":" + High[ago].ToString("R", inv) +
                   ",\"l\":" + Low[ago].ToString("R", inv) + ",\"c\":" + Close[ago].ToString("R", inv) +
                   ",\"volume\":" + Volume[ago].ToString(inv) + ",\"atr\":" + atr[ago].ToString("R", inv) + "}";
        }

        private string PostWithRetries(string json)
        {
            for (int attempt = 0; attempt <= RetryDelaysMs.Length; attempt++)
            {
                if (attempt > 0)
                    Thread.Sleep(RetryDelaysMs[attempt - 1]);
                try
                {
                    var request = new HttpRequestMessage(HttpMethod.Post, ServiceUrl.TrimEnd('/') + "/predict");
                    request.Headers.Add("X-API-Key", ApiKey);
                    request.Content = new StringContent(json, Encoding.UTF8, "application/json");
                    HttpResponseMessage response = Http.SendAsync(request).Result;
                    string body = response.Content.ReadAsStringAsync().Result;
                    int status = (int)response.StatusCode;
                    if (status == 200)
                        return body;
                    Print("SmcAutobot: /predict " + status + " " + body);
                    if (status != 429 && status < 500)
                        return null;                    // our request is wrong: retrying cannot help
                }
                catch (Exception error)
                {
                    Print("SmcAutobot: /predict attempt " + (attempt + 1) + " failed: " + error.Message);
                }
            }
            return null;
        }

        // Minimal field readers for the flat response; no JSON library is needed in NinjaScript.
        private static string JsonString(string json, string key)
        {
            int at = json.IndexOf("\"" + key + "\":\"", StringComparison.Ordinal);
            if (at < 0) return null;
            int start = at + key.Length + 4;
            int end = json.IndexOf('"', start);
            return end < 0 ? null : json.Substring(start, end - start);
        }

        private static double JsonNumber(string json, string key)
        {
            int at = json.IndexOf("\"" + key + "\":", StringComparison.Ordinal);
            if (at < 0) return double.NaN;
            int start = at + key.Length + 3;
            int end = start;
            while (end < json.Length && "+-.0123456789eE".IndexOf(json[end]) >= 0) end++;
            double value;
            return double.TryParse(json.Substring(start, end - start), NumberStyles.Float, CultureInfo.InvariantCulture,
                                   out value) ? value : double.NaN;
        }
    }
}
