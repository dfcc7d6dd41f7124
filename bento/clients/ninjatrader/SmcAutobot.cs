// SmcAutobot — NinjaTrader 8 strategy: on every closed bar, ask the SMC service and trade its answer.
//
// Thin on purpose: the HTTP client, JSON, retries, the deadline, the confidence tiers and the
// position rule live in SmcClient.cs (no NinjaTrader types; compiled and tested on Linux against
// the real service). This file only turns bars into a request and a decision into orders:
//
//   bar close → POST /predict (49 bars, UTC close times) → SmcPolicy.Decide (smc_core/policy.py)
//             → SetStopLoss / SetProfitTarget from the answer's risk block → EnterLong / EnterShort
//
// - Real time: the request never waits on NinjaTrader's thread. It runs under a deadline
//   (DeadlineMs, 300 ms by default, all three attempts included); the answer is traded through
//   TriggerCustomEvent on the bar it was asked for. No answer in time → no new entry, logged;
//   an open position keeps its stop and target.
// - History: not sent to /predict. When the strategy goes real time, the chart's closed bars are
//   uploaded once through POST /bars (idempotent on the server), in the background.
//   PredictHistoricalBars = true calls /predict on historical bars instead (Strategy Analyzer
//   backtests): bars are then processed one by one, so each waits for its answer, at most the
//   deadline.
// - Bar times: NinjaTrader shows bars in the time zone of Tools → Options → General, not in the
//   trading hours' zone; they are converted from that zone to UTC, through daylight saving.
// - Stop and target: the distances of the answer's risk block (the server's ATR × the multiples
//   the gates validated), in whole ticks from the fill as the backtest places them; or, with
//   StopsFromDecisionClose, its prices rounded to the tick.
// - Tiers and position: ≥ 0.70 full size (Contracts), ≥ the service's threshold half, else no
//   entry; already long + long = hold (no pyramiding); short + long = close, then enter long;
//   no entry on a session's last bar; flat at the session close (IsExitOnSessionCloseStrategy).
//
// Install: copy SmcAutobot.cs and SmcClient.cs to Documents\NinjaTrader 8\bin\Custom\Strategies\,
// open the NinjaScript Editor and press F5 (README "NinjaTrader" has settings and troubleshooting).

#region Using declarations
using System;
using System.Collections.Generic;
using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using System.Globalization;
using System.Threading;
using System.Threading.Tasks;
using NinjaTrader.Cbi;
using NinjaTrader.Data;
using NinjaTrader.NinjaScript;
#endregion

namespace NinjaTrader.NinjaScript.Strategies
{
    // Aliases inside the namespace: they win over any same-named type of NinjaTrader's namespaces.
    using SmcBar = Smc.Client.Bar;
    using SmcBarsUpload = Smc.Client.BarsUpload;
    using SmcClient = Smc.Client.SmcClient;
    using SmcDecision = Smc.Client.Decision;
    using SmcPolicy = Smc.Client.SmcPolicy;
    using SmcPredictAnswer = Smc.Client.PredictAnswer;
    using SmcPredictRequest = Smc.Client.PredictRequest;
    using SmcTime = Smc.Client.SmcTime;
    using SmcTradeAction = Smc.Client.TradeAction;
    using SmcUploadResult = Smc.Client.UploadResult;

    public class SmcAutobot : Strategy
    {
        private const string LongSignal = "SmcLong";
        private const string ShortSignal = "SmcShort";
        private const int UploadBatchBars = 20000;

        private SmcClient client;
        private string symbol;
        private string timeframe;
        private TimeZoneInfo barZone;
        private CancellationTokenSource lifetime;
        // UTC close time of every closed bar, by bar index (null: its time could not be converted)
        private readonly List<DateTime?> closeUtc = new List<DateTime?>();
        private int pendingBar = -1;        // real time: the bar whose answer is awaited
        private int? holdingLimit;          // max_holding_bars of the open trade's answer
        private int consecutiveMisses;
        private bool tickMismatchReported;
        private bool zoneReported;

        #region Properties
        [NinjaScriptProperty]
        [Display(Name = "Service URL", Order = 1, GroupName = "Service")]
        public string ServiceUrl { get; set; }

        [PasswordPropertyText(true)]
        [Display(Name = "API key (blank: environment variable SMC_API_KEY)", Order = 2, GroupName = "Service")]
        public string ApiKey { get; set; }

        [NinjaScriptProperty]
        [Display(Name = "Symbol at the service (blank: the master instrument's name)", Order = 3, GroupName = "Service")]
        public string ServiceSymbol { get; set; }

        [NinjaScriptProperty]
        [Range(2, 1000)]
        [Display(Name = "Bars per request (GET /model: required_bars)", Order = 4, GroupName = "Service")]
        public int RequiredBars { get; set; }

        [NinjaScriptProperty]
        [Range(10, 10000)]
        [Display(Name = "Deadline per bar, all attempts (ms)", Order = 5, GroupName = "Service")]
        public int DeadlineMs { get; set; }

        [NinjaScriptProperty]
        [Display(Name = "Upload history through POST /bars when going real-time", Order = 6, GroupName = "Service")]
        public bool UploadHistory { get; set; }

        [NinjaScriptProperty]
        [Display(Name = "Call /predict on historical bars (Strategy Analyzer)", Order = 7, GroupName = "Service")]
        public bool PredictHistoricalBars { get; set; }

        [NinjaScriptProperty]
        [Display(Name = "Model line horizon, e.g. h15 (blank: the service's first line for the chart's timeframe)",
                 Order = 8, GroupName = "Service")]
        public string Horizon { get; set; }

        [NinjaScriptProperty]
        [Range(1, int.MaxValue)]
        [Display(Name = "Contracts at full size", Order = 1, GroupName = "Trading")]
        public int Contracts { get; set; }

        [NinjaScriptProperty]
        [Range(0.01, 1.0)]
        [Display(Name = "Entry threshold when the answer has none", Order = 2, GroupName = "Trading")]
        public double EntryThreshold { get; set; }

        [NinjaScriptProperty]
        [Range(0.01, 1.0)]
        [Display(Name = "Full-size threshold", Order = 3, GroupName = "Trading")]
        public double FullSizeThreshold { get; set; }

        [NinjaScriptProperty]
        [Display(Name = "Stop and target at the answer's prices (off: its distances from the fill)", Order = 4,
                 GroupName = "Trading")]
        public bool StopsFromDecisionClose { get; set; }
        #endregion

        protected override void OnStateChange()
        {
            if (State == State.SetDefaults)
            {
                Name = "SmcAutobot";
                Description = "Trades the SMC service's answer on every closed bar (bento/clients/ninjatrader).";
                Calculate = Calculate.OnBarClose;
                EntriesPerDirection = 1;                 // no pyramiding
                EntryHandling = EntryHandling.AllEntries;
                IsExitOnSessionCloseStrategy = true;     // flat at the session close, as the labels and the backtest
                ExitOnSessionCloseSeconds = 30;
                BarsRequiredToTrade = 0;                 // RequiredBars governs
                ServiceUrl = "http://127.0.0.1:8000";
                ApiKey = "";
                ServiceSymbol = "";
                Horizon = "";
                RequiredBars = 49;
                DeadlineMs = 300;
                UploadHistory = true;
                PredictHistoricalBars = false;
                Contracts = 2;
                EntryThreshold = 0.55;
                FullSizeThreshold = 0.70;
                StopsFromDecisionClose = false;
            }
            else if (State == State.DataLoaded)
            {
                barZone = NinjaTrader.Core.Globals.GeneralOptions.TimeZoneInfo;
                symbol = string.IsNullOrWhiteSpace(ServiceSymbol) ? Instrument.MasterInstrument.Name : ServiceSymbol.Trim();
                timeframe = SmcTime.Timeframe(BarsPeriod.BarsPeriodType == BarsPeriodType.Minute,
                                              BarsPeriod.BarsPeriodType == BarsPeriodType.Second, BarsPeriod.Value);
                string key = string.IsNullOrEmpty(ApiKey) ? Environment.GetEnvironmentVariable("SMC_API_KEY") : ApiKey;
                try
                {
                    client = new SmcClient(ServiceUrl, key);
                }
                catch (ArgumentException error)
                {
                    client = null;
                    Report(error.Message + ": the strategy will not trade", true);
                }
                if (timeframe == null)
                    Report("only minute and second bars are served (this chart: " + BarsPeriod.Value + " "
                           + BarsPeriod.BarsPeriodType + "): the strategy will not trade", true);
                lifetime = new CancellationTokenSource();
                if (IsInStrategyAnalyzer && !PredictHistoricalBars)
                    Report("Strategy Analyzer with 'Call /predict on historical bars' off: no trades", true);
            }
            else if (State == State.Realtime)
            {
                if (UploadHistory && Usable)
                    StartHistoryUpload();
            }
            else if (State == State.Terminated)
            {
                // also reached by instances that never loaded data
                if (lifetime != null)
                {
                    lifetime.Cancel();
                    lifetime.Dispose();
                    lifetime = null;
                }
            }
        }

        private bool Usable { get { return client != null && timeframe != null && lifetime != null; } }

        protected override void OnBarUpdate()
        {
            DateTime? utc = RecordCloseTime();
            if (!Usable || utc == null)
                return;
            bool live = State == State.Realtime;
            if (!live && !PredictHistoricalBars)
                return;                                  // history goes to POST /bars, once
            if (CurrentBar < RequiredBars - 1)
                return;
            bool timeExit = ExitOnHoldingLimit();
            if (Bars.IsLastBarOfSession || timeExit)
                return;                                  // no entry on a session's last bar, nor beside a time exit

            SmcPredictRequest request = BuildRequest(live ? DateTime.UtcNow : utc.Value);
            if (request == null)
                return;
            TimeSpan deadline = TimeSpan.FromMilliseconds(DeadlineMs);
            if (!live)
            {
                // Historical bars are processed one after another, so this one waits for its answer,
                // at most the deadline (the client cancels every attempt at it; the margin only
                // covers scheduling).
                Task<SmcPredictAnswer> answer = client.PredictAsync(request, deadline, lifetime.Token);
                try
                {
                    answer.Wait(deadline + TimeSpan.FromMilliseconds(50));
                }
                catch (AggregateException)
                {
                    // reported by TradeAnswer from the task's state
                }
                TradeAnswer(CurrentBar, answer);
                return;
            }
            if (!zoneReported)
            {
                // the time-zone check: this line against the chart's last bar and a UTC clock
                Report("bar times from " + barZone.Id + ": the bar of " + Bars.GetTime(CurrentBar).ToString("yyyy-MM-dd HH:mm:ss",
                       CultureInfo.InvariantCulture) + " closed at " + request.CurrentBar.TimeUtc + " (UTC)", false);
                zoneReported = true;
            }
            if (pendingBar >= 0)
            {
                Missed(CurrentBar, "the answer for the bar before is still awaited");
                return;
            }
            int bar = CurrentBar;
            pendingBar = bar;
            CancellationToken stop = lifetime.Token;
            client.PredictAsync(request, deadline, stop).ContinueWith(task =>
            {
                if (!stop.IsCancellationRequested)
                    TriggerCustomEvent(state => TradeAnswer(bar, task), null);
            }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
        }

        // On NinjaTrader's thread: the answer for bar `bar`, traded if it is still the current bar.
        private void TradeAnswer(int bar, Task<SmcPredictAnswer> task)
        {
            if (bar == pendingBar)
                pendingBar = -1;
            if (!task.IsCompleted)
            {
                Missed(bar, "no answer within " + DeadlineMs + " ms");
                return;
            }
            if (task.IsFaulted || task.IsCanceled)
            {
                Exception error = task.Exception != null ? task.Exception.GetBaseException() : null;
                Missed(bar, error != null ? error.Message : "cancelled");
                return;
            }
            if (bar != CurrentBar)
            {
                Missed(bar, "the answer came after the next bar closed");
                return;
            }
            SmcPredictAnswer answer = task.Result;
            if (consecutiveMisses > 0)
                Report("answers again after " + consecutiveMisses + " missed bar(s)", true);
            consecutiveMisses = 0;

            double tick = Instrument.MasterInstrument.TickSize;
            if (Math.Abs(answer.Risk.TickSize - tick) > tick * 1e-6)
            {
                if (!tickMismatchReported)
                    Report("the model was validated with tick " + answer.Risk.TickSize.ToString(CultureInfo.InvariantCulture)
                           + ", this instrument's tick is " + tick.ToString(CultureInfo.InvariantCulture)
                           + ": wrong instrument or symbol, no entries", true);
                tickMismatchReported = true;
                return;
            }
            Smc.Client.PolicySettings settings;
            try
            {
                settings = SmcPolicy.For(answer, Contracts, EntryThreshold, FullSizeThreshold);
            }
            catch (ArgumentException error)
            {
                Missed(bar, error.Message);  // e.g. a threshold outside (0, 1]: never trade on it
                return;
            }
            SmcDecision decision = SmcPolicy.Decide(answer.Probabilities, SignedPosition(), answer.Risk, settings);
            if (decision.Action != SmcTradeAction.Enter && decision.Action != SmcTradeAction.Reverse)
                return;
            string signal = decision.Direction > 0 ? LongSignal : ShortSignal;
            if (StopsFromDecisionClose && answer.Risk.StopPrice.HasValue && answer.Risk.TargetPrice.HasValue)
            {
                SetStopLoss(signal, CalculationMode.Price, Instrument.MasterInstrument.RoundToTickSize(answer.Risk.StopPrice.Value),
                            false);
                SetProfitTarget(signal, CalculationMode.Price,
                                Instrument.MasterInstrument.RoundToTickSize(answer.Risk.TargetPrice.Value));
            }
            else
            {
                SetStopLoss(signal, CalculationMode.Ticks, SmcPolicy.Ticks(decision.StopDistance, tick), false);
                SetProfitTarget(signal, CalculationMode.Ticks, SmcPolicy.Ticks(decision.TargetDistance, tick));
            }
            holdingLimit = answer.Risk.MaxHoldingBars;
            if (decision.Direction > 0)
                EnterLong(decision.Contracts, signal);   // from short: NinjaTrader closes the short, then enters
            else
                EnterShort(decision.Contracts, signal);
            Print("SmcAutobot " + symbol + " " + Bars.GetTime(CurrentBar).ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture)
                  + ": " + decision + " request " + answer.RequestId + " " + answer.ModelVersion);
        }

        private int SignedPosition()
        {
            if (Position.MarketPosition == MarketPosition.Long)
                return Position.Quantity;
            return Position.MarketPosition == MarketPosition.Short ? -Position.Quantity : 0;
        }

        // The answer's time exit: close at the close of the trade's max_holding_bars-th bar (the
        // order fills at the next bar's open). True when an exit was sent on this bar.
        private bool ExitOnHoldingLimit()
        {
            if (!holdingLimit.HasValue || Position.MarketPosition == MarketPosition.Flat)
                return false;
            if (BarsSinceEntryExecution() + 1 < holdingLimit.Value)
                return false;
            if (Position.MarketPosition == MarketPosition.Long)
                ExitLong("SmcTimeExit", LongSignal);
            else
                ExitShort("SmcTimeExit", ShortSignal);
            return true;
        }

        // The UTC close time of the bar that just closed, kept for requests and the history upload.
        private DateTime? RecordCloseTime()
        {
            DateTime? previous = CurrentBar > 0 && CurrentBar - 1 < closeUtc.Count ? closeUtc[CurrentBar - 1] : null;
            DateTime? utc = null;
            if (barZone != null)
            {
                try
                {
                    utc = SmcTime.ToUtc(Bars.GetTime(CurrentBar), barZone, previous);
                }
                catch (ArgumentException error)
                {
                    Report("bar " + CurrentBar + ": " + error.Message, true);
                }
            }
            while (closeUtc.Count <= CurrentBar)
                closeUtc.Add(null);
            closeUtc[CurrentBar] = utc;
            return utc;
        }

        private SmcBar BarAt(int index)
        {
            DateTime? utc = index < closeUtc.Count ? closeUtc[index] : null;
            if (utc == null)
                return null;
            SmcBar bar = SmcBar.Of(utc.Value, Bars.GetOpen(index), Bars.GetHigh(index), Bars.GetLow(index), Bars.GetClose(index),
                             Bars.GetVolume(index));
            return bar.Problem() == null ? bar : null;
        }

        private SmcPredictRequest BuildRequest(DateTime requestTimeUtc)
        {
            var bars = new List<SmcBar>(RequiredBars);
            for (int index = CurrentBar - RequiredBars + 1; index <= CurrentBar; index++)
            {
                SmcBar bar = BarAt(index);
                if (bar == null)
                {
                    Missed(CurrentBar, "bar " + index + " cannot be sent (time or values)");
                    return null;
                }
                bars.Add(bar);
            }
            return SmcPredictRequest.For(bars, symbol, timeframe, requestTimeUtc,
                                         string.IsNullOrWhiteSpace(Horizon) ? null : Horizon.Trim());
        }

        // The chart's closed bars, once, in the background; the server keeps what it lacks.
        private void StartHistoryUpload()
        {
            var batches = new List<SmcBarsUpload>();
            var batch = new List<SmcBar>();
            int skipped = 0;
            for (int index = 0; index < closeUtc.Count; index++)
            {
                SmcBar bar = BarAt(index);
                if (bar == null)
                {
                    skipped++;
                    continue;
                }
                batch.Add(bar);
                if (batch.Count == UploadBatchBars)
                {
                    batches.Add(new SmcBarsUpload { Symbol = symbol, Timeframe = timeframe, Bars = batch });
                    batch = new List<SmcBar>();
                }
            }
            if (batch.Count > 0)
                batches.Add(new SmcBarsUpload { Symbol = symbol, Timeframe = timeframe, Bars = batch });
            if (batches.Count == 0)
                return;
            SmcClient uploader = client;
            CancellationToken stop = lifetime.Token;
            Task.Run(async () =>
            {
                int inserted = 0, unchanged = 0, conflicting = 0;
                foreach (SmcBarsUpload upload in batches)
                {
                    SmcUploadResult result = await uploader.UploadBarsAsync(upload, TimeSpan.FromSeconds(60), stop)
                                                        .ConfigureAwait(false);
                    inserted += result.Inserted;
                    unchanged += result.Unchanged;
                    conflicting += result.Conflicting;
                }
                return "history uploaded: " + inserted + " new, " + unchanged + " known, " + conflicting
                       + " differing from the stored bars (kept there for review)"
                       + (skipped > 0 ? "; " + skipped + " bar(s) not sendable" : "");
            }, stop).ContinueWith(task =>
            {
                if (stop.IsCancellationRequested)
                    return;
                string message = task.IsFaulted ? "history upload failed: " + task.Exception.GetBaseException().Message
                                                 : task.Result;
                TriggerCustomEvent(state => Report(message, task.IsFaulted), null);
            }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
        }

        private void Missed(int bar, string reason)
        {
            consecutiveMisses++;
            // every miss to the Output window; the first of a series also to the log (no flood when the service is away)
            Report("bar " + bar + ": " + reason + ": no new entry; an open position keeps its stop and target",
                   consecutiveMisses == 1);
        }

        private void Report(string message, bool warn)
        {
            string line = "SmcAutobot " + symbol + ": " + message;
            Print(line);
            if (warn)
                Log(line, LogLevel.Warning);
        }
    }
}
